"""The pipeline (instructrl.pipeline): every stage through one run directory, an iterated round,
skipping of finished stages, and resumption after a SIGKILL in the middle of PPO.

A tiny recipe on the conftest's tiny model (the shipped sandbox base model is not needed): the
sandbox world writes the data, SFT 2 epochs, K = 4 comparisons on a few dozen prompts, PPO(-ptx)
8 iterations of 16 episodes with a checkpoint after every iteration, one iterated round. The
LR warmup (6 iterations) and the adaptive KL controller make the resumed run depend on
restored scheduler and controller state, not only on the weights.
Pipelines run as subprocesses with one thread (OMP_NUM_THREADS=1) so that two runs of the same
recipe are bit-for-bit comparable on CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructrl.config import load_config
from instructrl.pipeline import run_pipeline
from instructrl.rundir import RunDir
from instructrl.stages.common import read_metrics

PPO_ITERS = 8
RECIPE = f"""\
sandbox: {{n_prompts: 400, n_users: 30, n_labelers: 3, n_heldout_labelers: 2, n_ptx_docs: 50}}
sft: {{epochs: 2, lr: 0.001, batch_size: 16, select_prompts: 8, max_prompt_tokens: 32,
      max_response_tokens: 16}}
collect: {{k: 4, n_prompts: 24, n_valid_prompts: 8, heldout_share: 1.0, max_prompt_tokens: 32,
          max_new_tokens: 8, batch_size: 32}}
rm: {{lr: 0.001, batch_size: 4, checkpoint_every: 3, max_prompt_tokens: 32,
     max_response_tokens: 16}}
ppo: {{episodes: {16 * PPO_ITERS}, batch_size: 16, mini_batch_size: 8, micro_batch_size: 8,
      lr: 0.001, max_prompt_tokens: 32, max_new_tokens: 8, ptx_per_episode: 1,
      ptx_max_tokens: 16, sample_every: 1, checkpoint_every: 1, warmup_iters: 6,
      adaptive_kl: true, target_kl: 0.05, kl_horizon: 64}}
pipeline: {{rounds: 1, base_model: "{{base}}"}}
"""
STAGES = ["sft", "collect-0", "rm", "ppo-ptx", "ppo", "collect-1", "rm-r1", "ppo-ptx-r1",
          "ppo-r1"]
PPO_STAGES = ["ppo-ptx", "ppo", "ppo-ptx-r1", "ppo-r1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def pipeline_cmd(out: Path, recipe: Path) -> list[str]:
    return [sys.executable, "-m", "instructrl.cli", "pipeline", "--out", str(out),
            "--recipe", str(recipe)]


def run_cli(out: Path, recipe: Path) -> str:
    log = out.parent / f"{out.name}.log"
    with log.open("a") as f:
        p = subprocess.run(pipeline_cmd(out, recipe), stdout=f, stderr=subprocess.STDOUT,
                           env=ENV, cwd=out.parent, timeout=300)
    text = log.read_text()
    assert p.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "recipe.yaml"
    path.write_text(RECIPE.replace("{base}", str(tiny_model_dir)))
    return path


@pytest.fixture(scope="module")
def full_run(recipe) -> Path:
    """One uninterrupted pipeline run (subprocess)."""
    out = recipe.parent / "full"
    run_cli(out, recipe)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def strip_times(rows: list[dict]) -> list[dict]:
    """Metrics rows without wall times (the only thing that may differ between runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_pipeline_runs_every_stage_and_a_rerun_skips_them_all(full_run, recipe, capsys):
    run = RunDir(full_run)
    summary = json.loads((full_run / "pipeline.json").read_text())
    # The final models of the iterated round are what evaluation gets.
    # Stored relative to the run directory, so it can move.
    assert summary["policies"] == {"sft": "sft", "ppo-ptx": "ppo-ptx-r1", "ppo": "ppo-r1"}
    assert summary["rm"] == "rm-r1"
    for stage in STAGES:
        assert run.is_done(stage), stage
        assert not (full_run / stage / "checkpoint").exists(), f"{stage} left its checkpoint"
    for stage in PPO_STAGES:
        rows = read_metrics(full_run / stage / "metrics.jsonl")
        assert [r["iteration"] for r in rows] == list(range(1, PPO_ITERS + 1)), stage
        assert all(math.isfinite(v) for r in rows for v in r.values()), stage
        # The resume test below depends on the LR warmup and the adaptive KL coefficient
        # moving during the run (both must then be restored from the checkpoint).
        assert len({r["lr"] for r in rows[:6]}) == 6, stage
        assert len({r["objective/kl_coef"] for r in rows}) > 1, stage
        assert (full_run / stage / "model.safetensors").exists()
        assert (full_run / stage / "value" / "config.json").exists()
    # ptx on for PPO-ptx only; round 1 continues from round 0's policies, against the SFT ref.
    assert run.done_info("ppo-ptx")["ptx_coef"] > 0 and run.done_info("ppo")["ptx_coef"] == 0
    assert "loss/ptx" in read_metrics(full_run / "ppo-ptx" / "metrics.jsonl")[0]
    assert "loss/ptx" not in read_metrics(full_run / "ppo" / "metrics.jsonl")[0]
    assert run.done_info("ppo-r1")["init"] == str(full_run / "ppo")
    assert run.done_info("ppo-r1")["ref"] == str(full_run / "sft")
    assert run.done_info("ppo-ptx-r1")["rm"] == str(full_run / "rm-r1")
    assert "rm" in json.loads((full_run / "sft" / "selection.json").read_text())
    assert weights(full_run / "ppo-ptx") != {} and any(
        not torch.equal(a, b) for a, b in zip(weights(full_run / "sft").values(),
                                              weights(full_run / "ppo-ptx").values()))

    # Rankings: both rounds' samples were ranked; held-out labelers ranked some (RM
    # evaluation) and none of theirs trained an RM (paper section 3.4).
    heldout = run.heldout_labelers()
    assert heldout
    split = {p.id: p.split for p in run.prompts()}
    rankings = run.rankings()
    round0 = {json.loads(line)["prompt_id"]
              for line in (full_run / "collect-0" / "samples.jsonl").read_text().splitlines()}
    held = [r for r in rankings if r.labeler_id in heldout]
    assert held and all(split[r.prompt_id] == "valid" for r in held)

    def trainable(r):  # a training labeler's ranking of a train prompt with an untied pair
        return (r.labeler_id not in heldout and split[r.prompt_id] == "train"
                and r.skipped is None and len(r.ranking) >= 2)
    for stage, pool in (("rm", [r for r in rankings if r.prompt_id in round0]),
                        ("rm-r1", rankings)):
        ev = json.loads((full_run / stage / "eval.json").read_text())
        n = sum(map(trainable, pool))
        assert ev["train_rankings"] == n, stage
        steps = len(read_metrics(full_run / stage / "metrics.jsonl"))
        assert steps == math.ceil(n / 4), stage  # rm.batch_size 4, one epoch
        assert ev["heldout_labelers"]["all"]["pairs"] > 0, stage
    assert len([r for r in rankings if r.prompt_id in round0]) < len(rankings)  # round 1 added

    # A rerun finds every stage done and touches no model.
    mtimes = {p: p.stat().st_mtime_ns for p in full_run.rglob("*.safetensors")}
    capsys.readouterr()
    again = run_pipeline(load_config(recipe), full_run)
    out = capsys.readouterr().out
    stage_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert stage_lines == [f"[{s}] done already, skipped" for s in STAGES], out
    assert again["policies"] == summary["policies"]
    assert {p: p.stat().st_mtime_ns for p in full_run.rglob("*.safetensors")} == mtimes


def test_sigkill_in_the_middle_of_ppo_resumes_to_the_same_result(full_run, recipe):
    out = recipe.parent / "killed"
    ckpt = out / "ppo-ptx" / "checkpoint" / "state.pt"
    metrics = out / "ppo-ptx" / "metrics.jsonl"
    log = (out.parent / "killed.log").open("w")
    proc = subprocess.Popen(pipeline_cmd(out, recipe), stdout=log, stderr=subprocess.STDOUT,
                            env=ENV, cwd=out.parent)
    rows_at_kill = 0
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            # Mid-PPO: a checkpoint exists and a few iterations are logged, not all.
            if ckpt.exists() and metrics.exists():
                rows_at_kill = len(metrics.read_text().splitlines())
                if rows_at_kill >= 3:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL, (out.parent / "killed.log").read_text()[-3000:]
    assert not RunDir(out).is_done("ppo-ptx"), "PPO finished before the kill"
    assert ckpt.exists() and 3 <= rows_at_kill < PPO_ITERS
    assert RunDir(out).is_done("sft") and RunDir(out).is_done("rm")

    text = run_cli(out, recipe)
    assert "[sft] done already, skipped" in text and "[rm] done already, skipped" in text
    assert "ppo-ptx: resuming after iteration" in text

    for stage in PPO_STAGES:
        assert RunDir(out).is_done(stage), stage
        want = strip_times(read_metrics(full_run / stage / "metrics.jsonl"))
        got = strip_times(read_metrics(out / stage / "metrics.jsonl"))
        assert got == want, stage
        files = sorted(p.relative_to(full_run) for p in (full_run / stage).rglob("*.safetensors"))
        assert len(files) == 3, files  # policy, value backbone, value head
        for f in files:
            a, b = load_file(str(full_run / f)), load_file(str(out / f))
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), f"{f} differs"
    assert (read_metrics(out / "ppo-ptx" / "samples.jsonl")
            == read_metrics(full_run / "ppo-ptx" / "samples.jsonl"))


def test_base_model_pretrain_flag_trains_one_into_the_run(tmp_path, capsys):
    # `pipeline.base_model: pretrain` retrains the sandbox base model inside the run instead of
    # using the shipped one; a rerun finds it done.
    from instructrl.config import load_config
    from instructrl.modeling import load_causal_lm, load_tokenizer
    from instructrl.pipeline import Timer, base_model

    cfg = load_config(None, ["pipeline.base_model=pretrain", "sandbox.n_corpus_docs=300",
                             "pretrain.vocab_size=320", "pretrain.hidden_size=32",
                             "pretrain.intermediate_size=64", "pretrain.num_layers=1",
                             "pretrain.num_heads=2", "pretrain.seq_len=32",
                             "pretrain.batch_size=4", "pretrain.steps=3",
                             "pretrain.warmup_steps=1", "pretrain.heldout_docs=10",
                             "pretrain.checkpoint_every=2", "pretrain.log_every=1"])
    run = RunDir(tmp_path / "run")
    path = base_model(cfg, run, Timer())
    assert path == run.stage("base")
    model = load_causal_lm(path)
    assert model.config.hidden_size == 32 and len(load_tokenizer(path)) <= 320
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert base_model(cfg, run, Timer()) == path
    assert "[pretrain] done already, skipped" in capsys.readouterr().out
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_pipeline_under_two_processes(full_run, recipe):
    # Each stage under N processes equals one process (tests/test_distributed.py); here the
    # chain: the main process alone writes the sandbox data and selects the SFT epoch while
    # the other waits, every stage finishes, and the log says each thing once. SFT's dropout
    # draws other masks on other shards, so the models differ from full_run's: the data the
    # main process wrote alone does not.
    out = recipe.parent / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "instructrl.cli", "pipeline", "--out", str(out), "--recipe", str(recipe)]
    p = subprocess.run(cmd, env=ENV, cwd=recipe.parent, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:]
    run = RunDir(out)
    assert all(run.is_done(stage) for stage in STAGES)
    for name in ("raw_prompts.jsonl", "prompts.jsonl", "demonstrations.jsonl"):
        assert (out / "data" / name).read_bytes() == (full_run / "data" / name).read_bytes()
    assert "rm" in json.loads((out / "sft" / "selection.json").read_text())
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["policies"] == {"sft": "sft", "ppo-ptx": "ppo-ptx-r1", "ppo": "ppo-r1"}
    lines = p.stdout.splitlines()
    assert sum(line.startswith("pipeline: ") for line in lines) == 1
    for stage in STAGES:
        assert lines.count(f"[{stage}] ...") == 1, stage
