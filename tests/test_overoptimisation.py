"""Policy snapshots along PPO (`ppo.snapshot_every`) and the over-optimisation trajectory
(instructrl.evaluate.overoptimisation; paper section 3.5): snapshots change nothing of the
training, survive a killed run, and the trajectory judges each one once, resuming where a
killed evaluation stopped."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import Crash, crash_on_call
from instructrl.rundir import RunDir
from instructrl.stages import ppo
from instructrl.stages.common import read_metrics
from test_eval_run import sandbox_run  # noqa: F401  (the fixture: a tiny sandbox run)

SMALL = ("ppo.episodes=24", "ppo.batch_size=8", "ppo.mini_batch_size=8")  # 3 iterations


def run_ppo(cfg, root, model_dir, rm_dir, stage="ppo", **kwargs):
    return ppo.train(cfg, RunDir(root), init=model_dir, ref=model_dir, rm=rm_dir,
                     value=rm_dir, stage=stage, ptx_coef=0.0, **kwargs)


def no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a, b) -> bool:
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def text(result: dict) -> str:
    """As the trajectory writes it (its win sections hold NaN, which is never == itself)."""
    return json.dumps(result, indent=1) + "\n"


def fingerprint(state: dict[str, torch.Tensor]) -> float:
    return round(sum(float(state[k].double().abs().sum()) for k in sorted(state)), 6)


def snapshot_dirs(out):
    return sorted(p.name for p in (out / "snapshots").iterdir())


def test_snapshots_at_their_iterations_change_nothing(tiny_run, make_cfg, tiny_model_dir,
                                                      tiny_rm_dir):
    # 3 iterations, a snapshot every 2: at 2 and at the last (3). The run without snapshots
    # has the same metrics and final model: the EMA swapped in to save is swapped out again.
    out0 = run_ppo(make_cfg(*SMALL), tiny_run, tiny_model_dir, tiny_rm_dir, stage="plain")
    out = run_ppo(make_cfg(*SMALL, "ppo.snapshot_every=2"), tiny_run, tiny_model_dir,
                  tiny_rm_dir)
    assert not (out0 / "snapshots").exists()
    assert snapshot_dirs(out) == ["iter-00002", "iter-00003"]
    rows = read_metrics(out / "metrics.jsonl")
    assert no_time(rows) == no_time(read_metrics(out0 / "metrics.jsonl"))
    assert same_weights(out, out0)
    for it in (2, 3):
        snap = out / "snapshots" / f"iter-{it:05d}"
        row = rows[it - 1]
        assert json.loads((snap / "snapshot.json").read_text()) == {
            "iteration": it, "episodes": 8 * it, "kl": row["objective/kl"],
            "rm_score": row["objective/scores"]}
        assert (snap / "tokenizer.json").exists()
    # The last snapshot is the final model (the EMA); the one before it is not.
    assert same_weights(out / "snapshots" / "iter-00003", out)
    assert not same_weights(out / "snapshots" / "iter-00002", out)


def test_a_killed_run_resumes_with_every_snapshot(tiny_run, make_cfg, tiny_model_dir,
                                                  tiny_rm_dir, monkeypatch):
    # 3 iterations, a snapshot every one, a checkpoint every 2 (and at the end). Killed in
    # the last snapshot, after its weights and before its snapshot.json (so after iteration
    # 3's metrics and before its checkpoint): the run resumes after iteration 2, keeps
    # snapshots 1-2 as they are and writes 3 again. Were snapshots written after the
    # checkpoint, the resumed run would find iteration 3 done and never write its snapshot.
    cfg = make_cfg(*SMALL, "ppo.checkpoint_every=2", "ppo.snapshot_every=1")
    roots = {name: tiny_run.parent / name for name in ("whole", "killed")}
    for root in roots.values():
        shutil.copytree(tiny_run / "data", root / "data")
    ref = run_ppo(cfg, roots["whole"], tiny_model_dir, tiny_rm_dir)

    real = crash_on_call(monkeypatch, ppo, "atomic_write_text", 3)
    with pytest.raises(Crash):
        run_ppo(cfg, roots["killed"], tiny_model_dir, tiny_rm_dir)
    monkeypatch.setattr(ppo, "atomic_write_text", real)
    out = roots["killed"] / "ppo"
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 2
    assert (out / "snapshots" / "iter-00003" / "model.safetensors").exists()
    assert not (out / "snapshots" / "iter-00003" / "snapshot.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in (out / "snapshots").glob("iter-*/*")
            if p.parent.name != "iter-00003"}

    saves = []
    real_save = ppo.save_pretrained_atomic

    def save(model, tok, directory, **kw):
        saves.append(directory.name)
        return real_save(model, tok, directory, **kw)

    monkeypatch.setattr(ppo, "save_pretrained_atomic", save)
    run_ppo(cfg, roots["killed"], tiny_model_dir, tiny_rm_dir)
    assert saves == ["iter-00003", "ppo"]  # snapshot 2 was there: not written again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert snapshot_dirs(out) == snapshot_dirs(ref) == [f"iter-{i:05d}" for i in range(1, 4)]
    assert no_time(read_metrics(out / "metrics.jsonl")) == no_time(
        read_metrics(ref / "metrics.jsonl"))
    for name in snapshot_dirs(ref):
        a, b = out / "snapshots" / name, ref / "snapshots" / name
        assert (a / "snapshot.json").read_text() == (b / "snapshot.json").read_text()
        assert same_weights(a, b), name
    assert same_weights(out, ref)


def test_trajectory_judges_each_snapshot_once(sandbox_run, tiny_model_dir,  # noqa: F811
                                              tiny_rm_dir, monkeypatch):
    from instructrl.config import load_config
    from instructrl.evaluate import overoptimisation
    from instructrl.evaluate.sandbox_eval import test_prompts
    from instructrl import generation

    # beta = 0 and no averaging (EMA decay 0: each snapshot is the trained policy itself),
    # so that the 2 snapshots of this short run are 3 different policies with the baseline.
    root, recipe = sandbox_run
    cfg = load_config(recipe, [
        "ppo.episodes=32", "ppo.batch_size=16", "ppo.mini_batch_size=8",
        "ppo.micro_batch_size=8", "ppo.lr=0.001", "ppo.max_prompt_tokens=32",
        "ppo.max_new_tokens=6", "ppo.warmup_iters=1", "ppo.snapshot_every=1",
        "ppo.kl_coef=0.0", "ppo.ema_decay=0.0"])
    run = RunDir(root)
    shutil.copytree(tiny_model_dir, run.stage("sft"))
    shutil.copytree(tiny_rm_dir, run.stage("rm"))
    run_ppo(cfg, root, run.stage("sft"), run.stage("rm"), stage="ppo-nokl")

    calls = []
    real_sample = generation.sample_texts

    def counted(model, tok, texts, **kw):
        calls.append((kw["seed"], fingerprint(model.state_dict())))
        return real_sample(model, tok, texts, **kw)

    monkeypatch.setattr(generation, "sample_texts", counted)
    res = overoptimisation.trajectory(cfg, run, "ppo-nokl")
    path = run.stage("eval") / "overoptimisation-ppo-nokl.json"
    assert path.read_text() == text(res)
    n = len(test_prompts(run, cfg.eval.n_prompts))
    assert res["stage"] == "ppo-nokl" and res["kl_coef"] == 0.0 and res["rm"] == "rm"
    assert res["n_prompts"] == n > 0
    # The baseline twice (its second sample with the next seed), each snapshot once.
    snaps = [run.stage("ppo-nokl") / "snapshots" / f"iter-{i:05d}" for i in (1, 2)]
    seed = cfg.eval.seed
    want = [(seed, fingerprint(weights(run.stage("sft")))),
            (seed + 1, fingerprint(weights(run.stage("sft"))))] + [
        (seed, fingerprint(weights(s))) for s in snaps]
    assert len({fp for _, fp in want}) == 3  # (PPO moved the policy)
    assert calls == want
    rows = read_metrics(run.stage("ppo-nokl") / "metrics.jsonl")
    pts = res["points"]
    assert [p["iteration"] for p in pts] == [0, 1, 2]
    assert [p["episodes"] for p in pts] == [0, 16, 32]
    assert pts[0]["kl"] == 0.0 and pts[0]["rm_score"] is None
    for p, row in zip(pts[1:], rows):
        assert (p["kl"], p["rm_score"]) == (row["objective/kl"], row["objective/scores"])
    for p in pts:
        w = p["win_rate"]["win_rate"]
        assert w["n"] == n and 0 <= w["low"] <= w["mean"] <= w["high"] <= 1
        assert -100 < p["eval_rm_score"] < 100

    # A killed evaluation: the last point is missing. The rerun samples the baseline (what it
    # is judged against) and that snapshot only, and gets the same point again.
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "points": saved["points"][:2]}))
    calls.clear()
    again = overoptimisation.trajectory(cfg, run, "ppo-nokl")
    assert calls == [want[0], want[3]] and text(again) == text(res)
    calls.clear()
    assert text(overoptimisation.trajectory(cfg, run, "ppo-nokl")) == text(res)
    assert calls == [] and path.read_text() == text(res)
