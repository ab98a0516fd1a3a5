"""Mixed precision in one place (instructrl.distributed.precision): `model.mixed_precision`
resolves like accelerate's, every training stage autocasts through it, fp16 scales the loss
and its scale is checkpointed with the rest of the training state. bf16 and fp16 run here on
the CPU (slowly); on a GPU they are the same code."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from instructrl.config import load_config
from instructrl.distributed import Precision, mixed_precision, precision
from instructrl.errors import InputError
from instructrl.rundir import RunDir
from instructrl.stages import ppo, reward, sft
from instructrl.stages.common import read_metrics
from conftest import Crash, crash_on_call

CPU = torch.device("cpu")


def test_auto_follows_accelerate_launch_else_float32_on_a_cpu(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert mixed_precision(load_config().model, CPU) == "fp32"
    assert precision(load_config().model, CPU).dtype is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch` exports it
    assert mixed_precision(load_config().model, CPU) == "bf16"
    assert mixed_precision(load_config(None, ["model.mixed_precision=fp32"]).model, CPU) == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert mixed_precision(load_config().model, CPU) == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(InputError, match="ACCELERATE_MIXED_PRECISION.*'fp8'"):
        mixed_precision(load_config().model, CPU)
    with pytest.raises(InputError, match="model.mixed_precision"):
        load_config(None, ["model.mixed_precision=fp8"])
    with pytest.raises(InputError, match="moved to model.mixed_precision"):
        load_config(None, ["ppo.autocast=bf16"])


def test_fp16_skips_a_step_whose_gradients_overflowed_and_halves_the_scale():
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    p = Precision("fp16", CPU)
    with p.autocast():
        out = layer(torch.ones(1, 3))
    assert out.dtype == torch.float16
    before = layer.weight.detach().clone()
    p.backward(out.float().sum() * 0)
    layer.weight.grad.fill_(float("inf"))
    p.step(opt, list(layer.parameters()))
    p.update()
    assert torch.equal(layer.weight, before)  # skipped
    assert p.state_dict()["scale"] == 2.0 ** 15  # from 2^16, halved
    opt.zero_grad()
    with p.autocast():
        p.backward(layer(torch.ones(1, 3)).float().sum())
    p.step(opt, list(layer.parameters()), max_norm=1.0)
    p.update()
    assert not torch.equal(layer.weight, before)
    q = Precision("fp16", CPU)
    q.load_state_dict(p.state_dict())
    assert q.state_dict()["scale"] == p.state_dict()["scale"]


def test_sft_under_fp16_resumes_with_its_loss_scale(tiny_run, make_cfg, tiny_model_dir,
                                                    monkeypatch):
    # The first steps overflow at the initial scale 2^16 and are skipped, halving it; a
    # resume that lost the scale would skip other steps and end elsewhere.
    cfg = make_cfg("sft.epochs=2", "sft.dropout=0", "model.mixed_precision=fp16")
    other = tiny_run.parent / "uninterrupted"
    shutil.copytree(tiny_run / "data", other / "data")
    sft.train(cfg, RunDir(other), tiny_model_dir)

    real_loss = crash_on_call(monkeypatch, sft, "sft_loss", 9)  # epoch 2, after its checkpoint
    with pytest.raises(Crash):
        sft.train(cfg, RunDir(tiny_run), tiny_model_dir)
    state = torch.load(tiny_run / "sft" / "checkpoint" / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] < 2.0 ** 16
    monkeypatch.setattr(sft, "sft_loss", real_loss)
    sft.train(cfg, RunDir(tiny_run), tiny_model_dir)
    one = read_metrics(tiny_run / "sft" / "metrics.jsonl")
    two = read_metrics(other / "sft" / "metrics.jsonl")
    assert one == two
    assert all(math.isfinite(r["loss/sft"]) for r in one if "loss/sft" in r)


def test_rm_under_bf16_trains_near_its_float32_run(tiny_run, make_cfg, tiny_model_dir):
    first = {}
    for name in ("fp32", "bf16"):
        cfg = make_cfg("rm.epochs=1", f"model.mixed_precision={name}")
        run = tiny_run.parent / f"rm-{name}"
        shutil.copytree(tiny_run / "data", run / "data")
        reward.train(cfg, RunDir(run), tiny_model_dir)
        first[name] = read_metrics(run / "rm" / "metrics.jsonl")[0]["loss/rm"]
    assert first["bf16"] != first["fp32"]  # it did run in bf16
    assert abs(first["bf16"] - first["fp32"]) < 0.02 * abs(first["fp32"])


def test_ppo_under_fp16_checkpoints_its_loss_scale(tiny_run, make_cfg, tiny_model_dir,
                                                   tiny_rm_dir):
    cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16", "model.mixed_precision=fp16")
    d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                  rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-fp16", max_iterations=1)
    state = torch.load(d / "checkpoint" / "state.pt", weights_only=False)
    assert 0 < state["scaler"]["scale"] <= 2.0 ** 16
    row = read_metrics(d / "metrics.jsonl")[0]
    assert all(math.isfinite(v) for v in row.values())
    # and the resume reads it back: the second iteration runs from the checkpoint
    d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                  rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-fp16")
    assert [r["iteration"] for r in read_metrics(d / "metrics.jsonl")] == [1, 2]
