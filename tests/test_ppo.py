"""Stage 3, PPO(-ptx) (instructrl.stages.ppo; paper section 3.5 Eq. 2, App. C.4).

The policy and reference start from the tiny model (standing in for the SFT model), the
reward model and value function from the tiny RM fixture (bias 0.37)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from instructrl.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from instructrl.rollout import response_scores
from instructrl.rundir import RunDir
from instructrl.stages import ppo
from instructrl.stages.common import read_metrics

METRIC_NAMES = ("objective/kl", "objective/scores", "objective/entropy", "loss/policy",
                "loss/value", "loss/ptx", "policy/approxkl", "policy/clipfrac", "val/clipfrac",
                "val/var_explained")


def run_ppo(cfg, run_root, model_dir, rm_dir, stage="ppo-ptx", **kwargs):
    return ppo.train(cfg, RunDir(run_root), init=model_dir, ref=model_dir, rm=rm_dir,
                     value=rm_dir, stage=stage, **kwargs)


def no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def saved(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_one_minibatch_equals_accumulated_micro_batches(tiny_run, make_cfg, tiny_model_dir,
                                                        tiny_rm_dir):
    # One iteration of 16 episodes as one minibatch (ptx on: 2 pretraining examples per
    # episode), computed whole and as 2 or 4 accumulated micro-batches. Responses end at
    # ragged lengths, so micro-batches hold different token counts.
    results = {}
    for micro in (16, 8, 4):
        cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16", "ppo.mini_batch_size=16",
                       f"ppo.micro_batch_size={micro}", "ppo.warmup_iters=0")
        out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir, stage=f"mb{micro}",
                      max_iterations=1)
        ckpt = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
        assert ckpt["iteration"] == 1
        results[micro] = ckpt, read_metrics(out / "metrics.jsonl")[0]

    init_policy = state(load_causal_lm(tiny_model_dir))
    init_value = state(ScalarHeadModel.from_pretrained(tiny_rm_dir))
    whole, whole_row = results[16]
    assert "loss/ptx" in whole_row
    # The checkpoint holds the trained parameters (every one here: no LoRA).
    assert whole["policy"].keys() == dict(load_causal_lm(tiny_model_dir).named_parameters()).keys()
    moved = max(float((whole["policy"][k] - init_policy[k]).abs().max()) for k in whole["policy"])
    moved_v = max(float((whole["value"][k] - init_value[k]).abs().max()) for k in whole["value"])
    assert moved > 1e-4 and moved_v > 1e-4  # the update is large next to the tolerance
    for micro in (8, 4):
        ckpt, row = results[micro]
        for part in ("policy", "value"):
            for k, v in whole[part].items():
                torch.testing.assert_close(ckpt[part][k], v, atol=1e-5, rtol=0,
                                           msg=f"{part}.{k} differs with micro-batch {micro}")
        for name in METRIC_NAMES:
            assert row[name] == pytest.approx(whole_row[name], abs=1e-5, rel=1e-4), name


def test_value_function_starts_as_the_reward_model(tiny_run, make_cfg, tiny_model_dir,
                                                   tiny_rm_dir):
    cfg = make_cfg()
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                        torch.device("cpu"))
    assert float(m.value.bias) == float(m.rm.bias) == pytest.approx(0.37)
    tok = load_tokenizer(tiny_model_dir)
    prompts = RunDir(tiny_run).prompts("train")[:16]
    r = ppo.make_rollout(m, tok, prompts, cfg.ppo, seed=0, device=torch.device("cpu"))
    lengths = r.response_mask.sum(1)
    assert len(set(lengths.tolist())) > 1

    with torch.no_grad():
        # At the last response token the value function reads exactly the RM's score.
        v_last = response_scores(m.value, r.queries, r.query_mask, r.responses, r.response_mask)
        torch.testing.assert_close(v_last, r.scores, atol=1e-6, rtol=0)
        # And at every step: the rollout's value of step t (read at the token before response
        # token t, rollout.py) is the RM's per-token output at that position.
        ids = torch.cat([r.queries, r.responses], 1)
        mask = torch.cat([r.query_mask, r.response_mask], 1)
        rm_tokens = m.rm(ids, mask)  # (B,T)
    Q = r.queries.shape[1]
    for b in range(len(prompts)):
        n = int(lengths[b])
        torch.testing.assert_close(r.values[b, :n], rm_tokens[b, Q - 1:Q - 1 + n], atol=1e-6,
                                   rtol=0)
        assert bool((r.values[b, n:] == 0).all())


def test_reward_fn_replaces_the_reward_model_score(tiny_run, make_cfg, tiny_model_dir,
                                                  tiny_rm_dir):
    # A text reward (here: the number of characters) takes the RM's place in the rollout;
    # the EOS trick still applies on top of it.
    cfg = make_cfg("ppo.missing_eos_score=-9.0")
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                        torch.device("cpu"))
    tok = load_tokenizer(tiny_model_dir)
    prompts = RunDir(tiny_run).prompts("train")[:16]
    seen = []

    def chars(ps, texts):
        seen.append((list(ps), list(texts)))
        return torch.tensor([float(len(t)) for t in texts])

    r = ppo.make_rollout(m, tok, prompts, cfg.ppo, seed=0, device=torch.device("cpu"),
                         reward_fn=chars)
    (ps, texts), = seen
    assert ps == prompts
    ended = ((r.responses == tok.eos_token_id) & r.response_mask.bool()).any(1)
    assert bool(ended.any()) and not bool(ended.all())  # both branches are exercised
    for i, text in enumerate(texts):
        ids = r.responses[i][r.response_mask[i].bool()].tolist()
        assert text == tok.decode(ids, skip_special_tokens=True).strip()
        want = float(len(text)) if ended[i] else -9.0
        assert float(r.scores[i]) == want


def test_ppo_iterations_train_policy_and_value_not_reference(tiny_run, make_cfg,
                                                             tiny_model_dir, tiny_rm_dir,
                                                             ppo_models_loaded):
    loaded = ppo_models_loaded
    cfg = make_cfg("ppo.episodes=32")  # 2 iterations of 2 minibatches
    out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir)
    (m,) = loaded

    init_policy = state(load_causal_lm(tiny_model_dir))
    init_rm = state(ScalarHeadModel.from_pretrained(tiny_rm_dir))
    # m.policy holds the EMA of the weights at the end (what is saved); a parameter that
    # never moved would have an EMA equal to its initial value.
    trained = {"policy": (m.policy, init_policy), "value": (m.value, init_rm)}
    for name, (model, init) in trained.items():
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names
        now = state(model)
        for n in names:
            assert not torch.equal(now[n], init[n]), f"{name} parameter {n} did not change"
    for name, (model, init) in {"ref": (m.ref, init_policy), "rm": (m.rm, init_rm)}.items():
        assert not any(p.requires_grad for p in model.parameters())
        now = state(model)
        assert now.keys() == init.keys()
        for n in now:
            assert torch.equal(now[n], init[n]), f"{name} {n} changed"

    # What is saved is what was trained.
    pol = saved(out)
    assert all(torch.equal(pol[k], v) for k, v in state(m.policy).items() if k in pol)
    val = state(ScalarHeadModel.from_pretrained(out / "value"))
    assert all(torch.equal(val[k], v) for k, v in state(m.value).items())
    assert RunDir(tiny_run).is_done("ppo-ptx") and not (out / "checkpoint").exists()

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        for name in METRIC_NAMES:
            assert name in r, name
        for k, v in r.items():
            assert isinstance(v, (int, float)) and math.isfinite(v), (k, v)
    assert read_metrics(out / "samples.jsonl")


class Crash(Exception):
    pass


def test_resume_matches_uninterrupted_run(tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir,
                                          monkeypatch):
    # 4 iterations; checkpoints every 2. Interrupted twice over: stopped on request after
    # iteration 2 (`max_iterations`), and crashed in iteration 3 after its metrics row was
    # written (which the resumed run must drop and redo). Each then runs to the end.
    cfg = make_cfg("ppo.episodes=64", "ppo.checkpoint_every=2", "ppo.warmup_iters=2")
    runs = {}
    for name in ("uninterrupted", "max_iterations", "crash"):
        runs[name] = tiny_run.parent / name
        shutil.copytree(tiny_run / "data", runs[name] / "data")
    ref_out = run_ppo(cfg, runs["uninterrupted"], tiny_model_dir, tiny_rm_dir)

    run_ppo(cfg, runs["max_iterations"], tiny_model_dir, tiny_rm_dir, max_iterations=2)
    real = ppo._write_samples

    def crash_in_iteration_3(log, tokenizer, prompts, r, it, *a, **k):
        if it == 3:
            raise Crash
        return real(log, tokenizer, prompts, r, it, *a, **k)

    monkeypatch.setattr(ppo, "_write_samples", crash_in_iteration_3)
    with pytest.raises(Crash):
        run_ppo(cfg, runs["crash"], tiny_model_dir, tiny_rm_dir)
    monkeypatch.setattr(ppo, "_write_samples", real)
    assert len(read_metrics(runs["crash"] / "ppo-ptx" / "metrics.jsonl")) == 3

    for name in ("max_iterations", "crash"):
        out = runs[name] / "ppo-ptx"
        ckpt = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
        assert ckpt["iteration"] == 2 and not RunDir(runs[name]).is_done("ppo-ptx")
        out = run_ppo(cfg, runs[name], tiny_model_dir, tiny_rm_dir)
        assert RunDir(runs[name]).is_done("ppo-ptx")
        for a, b in ((saved(out), saved(ref_out)),
                     (saved(out / "value"), saved(ref_out / "value")),
                     (load_file(str(out / "value" / "scalar_head.safetensors")),
                      load_file(str(ref_out / "value" / "scalar_head.safetensors")))):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        rows = read_metrics(out / "metrics.jsonl")
        assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
        assert no_time(rows) == no_time(read_metrics(ref_out / "metrics.jsonl")), name
        assert read_metrics(out / "samples.jsonl") == read_metrics(ref_out / "samples.jsonl")


@pytest.fixture
def bad_rm_dir(tiny_rm_dir, tmp_path):
    def make(value: float):
        rm = ScalarHeadModel.from_pretrained(tiny_rm_dir)
        rm.set_bias(value)
        return rm.save_pretrained(tmp_path / f"rm_{value}", load_tokenizer(tiny_rm_dir))
    return make


@pytest.mark.parametrize("bad", ["nan_rm", "inf_rm", "nan_ptx_loss"])
def test_non_finite_stops_and_keeps_last_checkpoint(tiny_run, make_cfg, tiny_model_dir,
                                                    tiny_rm_dir, bad_rm_dir, monkeypatch, bad):
    cfg = make_cfg("ppo.episodes=48")
    out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir, max_iterations=1)
    ckpt_path = out / "checkpoint" / "state.pt"
    before = ckpt_path.read_bytes()

    rm = tiny_rm_dir
    if bad == "nan_rm":
        rm, what = bad_rm_dir(float("nan")), "objective/scores"
    elif bad == "inf_rm":
        rm, what = bad_rm_dir(float("inf")), "objective/scores"
    else:
        real = ppo.ptx_loss

        def nan_ptx(*args, **kwargs):
            loss, stats = real(*args, **kwargs)
            return loss * float("nan"), stats

        monkeypatch.setattr(ppo, "ptx_loss", nan_ptx)
        what = "ptx loss"
    with pytest.raises(SystemExit) as e:
        ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir, rm=rm,
                  value=tiny_rm_dir, stage="ppo-ptx")
    msg = str(e.value)
    assert what in msg and "NaN/inf" in msg and "iteration 2" in msg and str(ckpt_path) in msg
    assert ckpt_path.read_bytes() == before
    assert not RunDir(tiny_run).is_done("ppo-ptx") and not (out / "model.safetensors").exists()
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1]


def test_plain_ppo_has_no_ptx_and_needs_no_pretraining_data(tiny_run, make_cfg, tiny_model_dir,
                                                            tiny_rm_dir):
    (tiny_run / "data" / "ptx.jsonl").unlink()
    cfg = make_cfg("ppo.episodes=32")
    out = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                    rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo", ptx_coef=0.0)
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 2
    assert not any(k.startswith(("loss/ptx", "ptx/")) for r in rows for k in r)
    assert all(name in r for r in rows for name in METRIC_NAMES if name != "loss/ptx")
    assert RunDir(tiny_run).done_info("ppo")["ptx_coef"] == 0.0


def test_missing_eos_gets_exactly_the_penalty(tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir):
    cfg = make_cfg("ppo.max_new_tokens=3", "ppo.missing_eos_score=-7.5")
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                        torch.device("cpu"))
    tok = load_tokenizer(tiny_model_dir)
    prompts = RunDir(tiny_run).prompts("train")[:16]
    r = ppo.make_rollout(m, tok, prompts, cfg.ppo, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        rm_scores = response_scores(m.rm, r.queries, r.query_mask, r.responses, r.response_mask)
    ended = [tok.eos_token_id in row[mask.bool()].tolist()
             for row, mask in zip(r.responses, r.response_mask)]
    assert any(ended) and not all(ended)
    for b, e in enumerate(ended):
        assert float(r.scores[b]) == (float(rm_scores[b]) if e else -7.5)

    # The stage uses it: iteration 1's mean score is that of the penalised rollout.
    out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir, max_iterations=1)
    c = cfg.ppo
    batch = ppo.prompts_for_iteration(RunDir(tiny_run).prompts("train"), 0, c.batch_size, c.seed)
    r0 = ppo.make_rollout(m, tok, batch, c, seed=c.seed * 1_000_003, device=torch.device("cpu"))
    assert bool((r0.scores == -7.5).any())
    row = read_metrics(out / "metrics.jsonl")[0]
    assert row["objective/scores"] == pytest.approx(float(r0.scores.mean()), abs=1e-6)


def test_var_explained_does_not_depend_on_micro_batch_size(tiny_run, make_cfg, tiny_model_dir,
                                                           tiny_rm_dir):
    # Like the losses, the reported explained variance of the value function must describe
    # the batch, not how it was cut into micro-batches for memory.
    got = {}
    for micro in (16, 4):
        cfg = make_cfg("ppo.episodes=16", "ppo.batch_size=16", "ppo.mini_batch_size=16",
                       f"ppo.micro_batch_size={micro}")
        out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir, stage=f"mb{micro}")
        got[micro] = read_metrics(out / "metrics.jsonl")[0]["val/var_explained"]
    assert got[4] == pytest.approx(got[16], abs=1e-5)


def test_one_token_responses_in_single_sequence_micro_batches_do_not_stop_training(
        tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir):
    # micro_batch_size 1 (a large model on one GPU) and a response that is a single token
    # (EOS at once): a diagnostic statistic of that micro-batch must not be 0/0 and stop the run.
    cfg = make_cfg("ppo.episodes=16", "ppo.micro_batch_size=1", "ppo.max_new_tokens=1")
    out = run_ppo(cfg, tiny_run, tiny_model_dir, tiny_rm_dir)
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 1 and all(math.isfinite(v) for v in rows[0].values())
