"""Stage 1, supervised fine-tuning (instructrl.stages.sft; paper section 3.5, App. C.1)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from instructrl import rollout
from instructrl.modeling import load_causal_lm, load_tokenizer
from instructrl.rundir import RunDir
from instructrl.stages import sft
from instructrl.stages.common import read_metrics
from conftest import Crash, crash_on_call


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def response_nll(model_dir, run, split: str) -> tuple[float, float, int]:
    """Computed here without the stage's code: each demonstration of `split` on its own
    (no padding), prompt in the sandbox template "user: {text}\\nassistant:\\n", response +
    EOS. Returns (mean NLL over response tokens, mean NLL over all predicted tokens,
    number of response tokens)."""
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    prompts = RunDir(run).prompts_by_id()
    resp_sum, resp_n, all_sum, all_n = 0.0, 0, 0.0, 0
    for d in RunDir(run).demonstrations():
        p = prompts[d.prompt_id]
        if p.split != split:
            continue
        q = tok(f"user: {p.text}\nassistant:\n", add_special_tokens=False)["input_ids"]
        r = tok(d.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([q + r])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        nll = -logp.gather(1, ids[0, 1:, None]).squeeze(1)  # nll[t] is token t+1's
        resp_sum += float(nll[len(q) - 1:].sum())
        resp_n += len(r)
        all_sum += float(nll.sum())
        all_n += len(nll)
    return resp_sum / resp_n, all_sum / all_n, resp_n


def test_loss_is_taken_on_response_tokens_only(tiny_run, make_cfg, tiny_model_dir):
    # One batch holding every training demonstration, no dropout: the first logged loss is
    # the initial model's mean NLL of the demonstrations' response tokens (EOS included).
    cfg = make_cfg("sft.epochs=1", "sft.dropout=0.0", "sft.batch_size=40",
                   "sft.max_response_tokens=64")
    sft.train(cfg, RunDir(tiny_run), tiny_model_dir)
    first = read_metrics(tiny_run / "sft" / "metrics.jsonl")[0]
    want, with_prompt, n_tokens = response_nll(tiny_model_dir, tiny_run, "train")
    assert abs(want - with_prompt) > 1e-2  # the check below can tell the two apart
    assert first["loss/sft"] == pytest.approx(want, rel=1e-5)
    assert first["sft/tokens"] == n_tokens


def test_checkpoint_per_epoch_and_selection_by_validation_loss(tiny_run, make_cfg,
                                                               tiny_model_dir):
    cfg = make_cfg("sft.epochs=3")
    run = RunDir(tiny_run)
    out = sft.train(cfg, run, tiny_model_dir)
    epochs = sorted(p.name for p in (out / "epochs").iterdir())
    assert epochs == ["01", "02", "03"]
    w = {e: weights(out / "epochs" / f"{e:02d}") for e in (1, 2, 3)}
    assert not same_weights(w[1], w[2]) and not same_weights(w[2], w[3])

    # Each epoch's logged validation loss is the loss of that epoch's saved checkpoint.
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        nll, _, _ = response_nll(out / "epochs" / f"{r['epoch']:02d}", tiny_run, "valid")
        assert r["val/loss"] == pytest.approx(nll, rel=1e-4)

    val = {r["epoch"]: r["val/loss"] for r in rows}
    sel = json.loads((out / "selection.json").read_text())
    best = min(val, key=val.get)
    assert sel["epoch"] == best and "validation loss" in sel["selected_by"]
    assert same_weights(weights(out), w[best])
    assert run.is_done("sft") and not (out / "checkpoint").exists()

    # Selection follows the minimum wherever it is: make epoch 2 the best and select again.
    lines = []
    for r in read_metrics(out / "metrics.jsonl"):
        if r.get("epoch") == 2 and "val/loss" in r:
            r["val/loss"] = min(val.values()) - 1.0
        lines.append(json.dumps(r))
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert sft.select(cfg, run, None)["epoch"] == 2
    assert json.loads((out / "selection.json").read_text())["epoch"] == 2
    assert same_weights(weights(out), w[2])


def test_select_by_reward_model_writes_table_and_installs_best_epoch(
        tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir):
    from instructrl.generation import sample_texts, score_texts
    from instructrl.modeling import ScalarHeadModel

    cfg = make_cfg("sft.epochs=3")
    run = RunDir(tiny_run)
    out = sft.train(cfg, run, tiny_model_dir)
    val = {r["epoch"]: r["val/loss"] for r in read_metrics(out / "metrics.jsonl")
           if "val/loss" in r}
    first = sft.select(cfg, run, tiny_rm_dir)
    table = {row["epoch"]: row for row in first["table"]}
    assert sorted(table) == [1, 2, 3]
    best = max(table, key=lambda e: table[e]["rm_score"])
    assert len({row["rm_score"] for row in table.values()}) > 1

    # The table's scores are the RM's mean score of each epoch's own samples.
    c = cfg.sft
    prompts = run.prompts("valid")
    random.Random(c.seed).shuffle(prompts)
    texts = [p.text for p in prompts[:c.select_prompts]]
    rm = ScalarHeadModel.from_pretrained(tiny_rm_dir).eval()
    for e, row in table.items():
        d = out / "epochs" / f"{e:02d}"
        resp = sample_texts(load_causal_lm(d), load_tokenizer(d), texts,
                            max_prompt_tokens=c.max_prompt_tokens,
                            max_new_tokens=c.max_response_tokens, seed=c.seed)
        scores = score_texts(rm, load_tokenizer(d), texts, resp,
                             max_prompt_tokens=c.max_prompt_tokens,
                             max_response_tokens=c.max_response_tokens)
        assert row["rm_score"] == pytest.approx(float(scores.mean()), abs=1e-5)
        assert row["val_loss"] == pytest.approx(val[e])

    # Install a worse epoch at sft/, then select again: the RM's choice replaces it.
    other = next(e for e in table if e != best)
    sft.install_epoch(cfg, out, other, {"epoch": other})
    assert same_weights(weights(out), weights(out / "epochs" / f"{other:02d}"))
    sel = sft.select(cfg, run, tiny_rm_dir)
    assert sel["epoch"] == best and sel["table"] == first["table"]
    on_disk = json.loads((out / "selection.json").read_text())
    assert on_disk["epoch"] == best and "RM score" in on_disk["selected_by"]
    assert [r["epoch"] for r in on_disk["table"]] == [1, 2, 3]
    assert same_weights(weights(out), weights(out / "epochs" / f"{best:02d}"))


# 5 train + 2 valid batches per epoch at batch size 8. Crash in epoch 2, two steps after the
# epoch-1 checkpoint; or in epoch 1, a step after the checkpoint of step 3 (checkpoint_every
# 3): either way metrics.jsonl holds a row the checkpoint does not.
@pytest.mark.parametrize("sets,crash_call,last_row,ckpt_step", [
    ([], 9, 6, 5), (["sft.checkpoint_every=3"], 5, 4, 3)], ids=["epoch end", "mid-epoch"])
def test_resume_after_crash_matches_uninterrupted_run(tiny_run, make_cfg, tiny_model_dir,
                                                      monkeypatch, sets, crash_call, last_row,
                                                      ckpt_step):
    cfg = make_cfg("sft.epochs=2", *sets)  # dropout 0.2 stays on: the RNG state must resume too
    other = tiny_run.parent / "uninterrupted"
    shutil.copytree(tiny_run / "data", other / "data")
    sft.train(cfg, RunDir(other), tiny_model_dir)

    real_loss = crash_on_call(monkeypatch, sft, "sft_loss", crash_call)
    with pytest.raises(Crash):
        sft.train(cfg, RunDir(tiny_run), tiny_model_dir)
    out = tiny_run / "sft"
    assert (out / "checkpoint" / "state.pt").exists() and not RunDir(tiny_run).is_done("sft")
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == ckpt_step
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == last_row
    monkeypatch.setattr(sft, "sft_loss", real_loss)
    sft.train(cfg, RunDir(tiny_run), tiny_model_dir)

    for e in ("01", "02"):
        assert same_weights(weights(out / "epochs" / e), weights(other / "sft" / "epochs" / e))
    assert same_weights(weights(out), weights(other / "sft"))
    assert read_metrics(out / "metrics.jsonl") == read_metrics(other / "sft" / "metrics.jsonl")


def test_rl_initialisation_mixes_pretraining_data(tiny_run, make_cfg, tiny_model_dir):
    # App. C.3: the RL policy's initialisation trains with 10 % pretraining data mixed in.
    # With ptx_fraction 0.5 half of the examples are pretraining windows, so an epoch has
    # twice the steps of the demonstrations alone.
    run = RunDir(tiny_run)
    prompts = run.prompts_by_id()
    n_demos = sum(prompts[d.prompt_id].split == "train" for d in run.demonstrations())
    cfg = make_cfg("sft.epochs=1", "sft.batch_size=4", "sft.ptx_fraction=0.5")
    sft.train(cfg, run, tiny_model_dir)
    steps = [r for r in read_metrics(tiny_run / "sft" / "metrics.jsonl") if "loss/sft" in r]
    assert len(steps) == -(-2 * n_demos // 4)


def test_fused_logprobs_train_what_the_logits_path_trains(tiny_run, make_cfg, tiny_model_dir,
                                                          monkeypatch):
    # sft.fused_logprobs: the demonstrations' log-probs taken with the output layer chunk by
    # chunk, no (B, T, V) logits: the same losses, validation losses and weights as from the
    # logits, to float rounding. Dropout stays on in both runs: the check on the first batch
    # runs without it and draws no random numbers, so both see the same dropout masks.
    other = tiny_run.parent / "fused"
    shutil.copytree(tiny_run / "data", other / "data")
    sft.train(make_cfg("sft.epochs=2"), RunDir(tiny_run), tiny_model_dir)
    calls = []
    real = rollout.fused_output
    monkeypatch.setattr(rollout, "fused_output", lambda *a, **k: calls.append(1) or real(*a, **k))
    sft.train(make_cfg("sft.epochs=2", "sft.fused_logprobs=true"), RunDir(other), tiny_model_dir)
    steps = sum("loss/sft" in r for r in read_metrics(other / "sft" / "metrics.jsonl"))
    assert len(calls) > steps  # every training forward fused, the check's and validation's too
    plain = read_metrics(tiny_run / "sft" / "metrics.jsonl")
    fused = read_metrics(other / "sft" / "metrics.jsonl")
    assert [r.keys() for r in fused] == [r.keys() for r in plain]
    assert any("val/loss" in r for r in plain)
    for a, b in zip(plain, fused):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    for e in ("01", "02"):
        a = weights(tiny_run / "sft" / "epochs" / e)
        b = weights(other / "sft" / "epochs" / e)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


def test_fused_logprobs_refuse_a_model_that_changes_its_logits(tiny_run, make_cfg,
                                                              tiny_model_dir, monkeypatch):
    # A forward that scales the output layer's logits: fused log-probs would be those of
    # other logits, so SFT stops before its first step and names the setting.
    from conftest import ScaledLogits

    load = sft.load_model
    monkeypatch.setattr(sft, "load_model", lambda *a, **k: ScaledLogits(load(*a, **k)))
    with pytest.raises(ValueError, match="sft.fused_logprobs false"):
        sft.train(make_cfg("sft.epochs=1", "sft.fused_logprobs=true"), RunDir(tiny_run),
                  tiny_model_dir)
    assert read_metrics(tiny_run / "sft" / "metrics.jsonl") == []
