"""Sharded weights (FSDP2 through accelerate's FSDP settings, instructrl.distributed.wrap): SFT
and the RM on 2 CPU processes (gloo) with every weight, gradient and optimizer state split
between them train what one unsharded process trains; a checkpoint written sharded holds the
whole state, so a run killed under FSDP resumes sharded or in one plain process and ends
where the uninterrupted run ends; PPO-ptx trains sharded what it trains in one process, and a
sharded PPO run killed resumes in one process; with LoRA, the frozen base and the adapters are
sharded together and every stage again trains what one process trains; DeepSpeed configs
(ZeRO stages, offload) shard the same way."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructrl.stages.common import read_metrics
from conftest import TINY_RECIPE, _write_run
from test_distributed import command, compare_rows, env, kill_tree, launch, stage_args


def fsdp_env(strategy: str = "FULL_SHARD") -> dict:
    """What `accelerate launch` exports for an FSDP config (the keys instructrl reads)."""
    return {**env(), "ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": strategy}


def launch_two(args: list[str], environment: dict) -> str:
    """2 processes under torchrun with `environment` (what a launcher exports); the output."""
    proc = subprocess.run(command(2, args), env=environment, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def launch_fsdp(args: list[str], strategy: str = "FULL_SHARD") -> str:
    return launch_two(args, fsdp_env(strategy))


@pytest.fixture
def runs(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    out = {}
    for name in ("plain", "fsdp", "killed"):
        out[name] = tmp_path / name
        _write_run(out[name])
    return recipe, out


def same_weights(a, b) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def launch_accelerate(args: list[str]) -> str:
    """Through `accelerate launch` and the shipped FSDP config, as a user runs it (2
    processes here, float32: these CPUs have no bf16)."""
    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "8-gpus-fsdp.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", "2", "--mixed_precision", "no", "-m", "instructrl.cli", *args]
    proc = subprocess.run(cmd, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_sharded_sft_and_rm_train_what_one_process_trains(runs, tiny_model_dir, tiny_rm_dir):
    # SFT through accelerate's FSDP config (reshard after forward: ZeRO-3's arithmetic), its
    # log-probs fused with the (sharded) output layer on both sides; the RM through torchrun
    # with SHARD_GRAD_OP (ZeRO-2's).
    recipe, r = runs
    for stage in ("sft", "rm"):
        fused = ["--set", "sft.fused_logprobs=true"] if stage == "sft" else []
        launch(1, stage_args(stage, r["plain"], recipe, tiny_model_dir, tiny_rm_dir) + fused)
        args = stage_args(stage, r["fsdp"], recipe, tiny_model_dir, tiny_rm_dir) + fused
        if stage == "sft":
            out = launch_accelerate(args)
            assert "sharded over 2 processes (FSDP2, reshard after forward: yes)" in out
        else:
            out = launch_fsdp(args, "SHARD_GRAD_OP")
            assert "sharded over 2 processes (FSDP2, reshard after forward: no)" in out
        compare_rows(read_metrics(r["plain"] / stage / "metrics.jsonl"),
                     read_metrics(r["fsdp"] / stage / "metrics.jsonl"), stage)
        same_weights(r["plain"] / stage, r["fsdp"] / stage)
        assert (r["fsdp"] / stage / "done.json").exists()
        assert not (r["fsdp"] / stage / "checkpoint").exists()
    # the RM's evaluation ran on the main process's plain copy of the sharded model
    assert (r["fsdp"] / "rm" / "eval.json").read_text() != ""
    epochs = sorted(d.name for d in (r["plain"] / "sft" / "epochs").iterdir())
    assert epochs == sorted(d.name for d in (r["fsdp"] / "sft" / "epochs").iterdir())
    for e in epochs:  # every SFT epoch was gathered and saved whole
        same_weights(r["plain"] / "sft" / "epochs" / e, r["fsdp"] / "sft" / "epochs" / e)


def test_deepspeed_configs_shard_and_train_what_one_process_trains(runs, tiny_model_dir,
                                                                  tiny_rm_dir, tmp_path):
    # What `accelerate launch` exports for a DeepSpeed config: SFT from a DeepSpeed JSON file
    # (ZeRO-3, CPU offload), the RM from accelerate's own keys (ZeRO-2); both run as FSDP2.
    recipe, r = runs
    ds_json = tmp_path / "ds.json"
    ds_json.write_text('{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}},'
                       ' "train_batch_size": "auto", "gradient_clipping": 0.5}')
    envs = {"sft": {"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds_json)},
            "rm": {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}}
    said = {"sft": f"DeepSpeed ZeRO-3 ({ds_json}): trained models are sharded with FSDP2 "
                   "(reshard after forward: yes, CPU offload: yes); DeepSpeed's engine is not "
                   f"used. Set by the recipe, not by {ds_json}: gradient_clipping",
            "rm": "DeepSpeed ZeRO-2 (accelerate config): trained models are sharded with FSDP2 "
                  "(reshard after forward: no, CPU offload: no)"}
    for stage in ("sft", "rm"):
        launch(1, stage_args(stage, r["plain"], recipe, tiny_model_dir, tiny_rm_dir))
        out = launch_two(stage_args(stage, r["fsdp"], recipe, tiny_model_dir, tiny_rm_dir),
                         {**env(), "ACCELERATE_USE_DEEPSPEED": "true", **envs[stage]})
        assert said[stage] in out and "sharded over 2 processes" in out
        compare_rows(read_metrics(r["plain"] / stage / "metrics.jsonl"),
                     read_metrics(r["fsdp"] / stage / "metrics.jsonl"), stage)
        same_weights(r["plain"] / stage, r["fsdp"] / stage)


@pytest.mark.parametrize("resume", ["sharded", "one process"])
def test_sharded_rm_killed_resumes_and_matches(runs, tiny_model_dir, tiny_rm_dir, resume):
    recipe, r = runs
    args = lambda run: stage_args("rm", run, recipe, tiny_model_dir, tiny_rm_dir) + [
        "--set", "rm.checkpoint_every=2"]
    launch(1, args(r["plain"]))
    proc = subprocess.Popen(command(2, args(r["killed"])), env=fsdp_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt = r["killed"] / "rm" / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint before the run ended"
    kill_tree(proc)
    assert not (r["killed"] / "rm" / "done.json").exists()
    saved = torch.load(ckpt, weights_only=False)
    assert isinstance(next(iter(saved["optimizer"]["state"])), int)  # torch's own format
    if resume == "sharded":
        assert "sharded over 2 processes" in launch_fsdp(args(r["killed"]))
    else:
        assert "sharded over" not in launch(1, args(r["killed"]))  # one process, no FSDP
    compare_rows(read_metrics(r["plain"] / "rm" / "metrics.jsonl"),
                 read_metrics(r["killed"] / "rm" / "metrics.jsonl"), "rm")
    same_weights(r["plain"] / "rm", r["killed"] / "rm")


def test_sharded_ppo_trains_what_one_process_trains(runs, tiny_model_dir, tiny_rm_dir):
    # The policy and value sharded; each process gathers the policy whole to sample its
    # block (each decodes its own number of steps), scores with the sharded value model,
    # trains in lockstep; the EMA averages each shard; the saved models are gathered whole.
    # Log-probs fused with the output layer (sharded in a group of its own) on both sides.
    recipe, r = runs
    fused = ["--set", "ppo.fused_logprobs=true"]
    launch(1, stage_args("ppo", r["plain"], recipe, tiny_model_dir, tiny_rm_dir) + fused)
    out = launch_fsdp(stage_args("ppo", r["fsdp"], recipe, tiny_model_dir, tiny_rm_dir)
                      + fused)
    assert out.count("sharded over 2 processes") == 2  # the policy and the value model
    compare_rows(read_metrics(r["plain"] / "ppo-ptx" / "metrics.jsonl"),
                 read_metrics(r["fsdp"] / "ppo-ptx" / "metrics.jsonl"), "ppo-ptx")
    s1 = read_metrics(r["plain"] / "ppo-ptx" / "samples.jsonl")
    s2 = read_metrics(r["fsdp"] / "ppo-ptx" / "samples.jsonl")
    assert [x["response"] for x in s1] == [x["response"] for x in s2]
    same_weights(r["plain"] / "ppo-ptx", r["fsdp"] / "ppo-ptx")
    same_weights(r["plain"] / "ppo-ptx" / "value", r["fsdp"] / "ppo-ptx" / "value")


LORA = ["--set", "lora.r=4", "--set", "lora.dropout=0"]  # (dropout masks differ per process)


def test_lora_sharded_trains_what_one_process_trains(runs, tiny_model_dir, tiny_rm_dir):
    # The frozen base and the adapters sharded together (FSDP2 groups with frozen weights):
    # SFT's adapter epochs, the RM and PPO-ptx (its reference and RM the adapter-disabled
    # views of the sharded policy and value model) equal one process; the merged models and
    # the adapters are gathered whole to be saved.
    recipe, r = runs
    for stage, name in (("sft", "sft"), ("rm", "rm"), ("ppo", "ppo-ptx")):
        launch(1, stage_args(stage, r["plain"], recipe, tiny_model_dir, tiny_rm_dir) + LORA)
        out = launch_fsdp(stage_args(stage, r["fsdp"], recipe, tiny_model_dir, tiny_rm_dir)
                          + LORA)
        assert "sharded over 2 processes" in out
        compare_rows(read_metrics(r["plain"] / name / "metrics.jsonl"),
                     read_metrics(r["fsdp"] / name / "metrics.jsonl"), name)
        same_weights(r["plain"] / name, r["fsdp"] / name)
    for e in sorted(d.name for d in (r["plain"] / "sft" / "epochs").iterdir()):
        a, b = (load_file(str(x / "sft" / "epochs" / e / "adapter_model.safetensors"))
                for x in (r["plain"], r["fsdp"]))
        assert a.keys() == b.keys() and any("lora_A" in k for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    same_weights(r["plain"] / "ppo-ptx" / "value", r["fsdp"] / "ppo-ptx" / "value")
    for model in ("ppo-ptx", "ppo-ptx/value"):
        assert (r["fsdp"] / model / "adapter" / "adapter_model.safetensors").exists()


def test_lora_over_a_bf16_base_shards(runs, tiny_model_dir, tiny_rm_dir):
    # recipes/gpu-8-7b-lora.yaml's weights: a bf16 frozen base under float32 adapters, in one
    # FSDP group per block (FSDP2 asks only the trained weights to share a dtype).
    recipe, r = runs
    for stage, name in (("sft", "sft"), ("rm", "rm"), ("ppo", "ppo-ptx")):
        out = launch_fsdp(stage_args(stage, r["fsdp"], recipe, tiny_model_dir, tiny_rm_dir)
                          + ["--set", "lora.r=4", "--set", "model.dtype=bf16"])
        assert "sharded over 2 processes" in out and (r["fsdp"] / name / "done.json").exists()
        rows = read_metrics(r["fsdp"] / name / "metrics.jsonl")
        assert rows and all(v == v for row in rows for v in row.values()
                            if isinstance(v, float))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_ppo_killed_resumes_in_one_process_and_matches(runs, tiny_model_dir,
                                                               tiny_rm_dir, lora):
    # The checkpoint of a sharded PPO run (policy, value, both optimizers, the EMA of the
    # policy's shards) holds whole tensors: one plain process carries on from it.
    recipe, r = runs
    args = lambda run: stage_args("ppo", run, recipe, tiny_model_dir, tiny_rm_dir) + [
        "--set", "ppo.episodes=160"] + (LORA if lora else [])  # 10 iterations: time to kill
    launch(1, args(r["plain"]))
    proc = subprocess.Popen(command(2, args(r["killed"])), env=fsdp_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = r["killed"] / "ppo-ptx" / "metrics.jsonl"
    ckpt = r["killed"] / "ppo-ptx" / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and len(read_metrics(metrics)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill_tree(proc)
    time.sleep(0.5)
    assert ckpt.exists() and not (r["killed"] / "ppo-ptx" / "done.json").exists()
    out = launch(1, args(r["killed"]))
    assert "resuming after iteration" in out and "sharded over" not in out
    compare_rows(read_metrics(r["plain"] / "ppo-ptx" / "metrics.jsonl"), read_metrics(metrics),
                 "resumed ppo-ptx")
    same_weights(r["plain"] / "ppo-ptx", r["killed"] / "ppo-ptx")
