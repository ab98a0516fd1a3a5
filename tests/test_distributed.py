"""Stages as N data-parallel processes (instructrl.distributed): 2 CPU processes under torchrun
(gloo, one thread each) give the metrics and models of one process with the same global
batch; only the main process writes; a SIGKILL mid-PPO under 2 processes resumes and ends
where an uninterrupted run ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructrl.modeling import load_causal_lm, load_tokenizer
from instructrl.rundir import RunDir
from instructrl.stages import ppo
from instructrl.stages.common import read_metrics
from conftest import TINY_RECIPE, _write_run

# No dropout in SFT (the paper's 0.2 would draw other masks on other shards). Batches of 3
# leave the last batch of SFT (40 demonstrations) and of the RM (34 rankings) one item: the
# second process has nothing of it and still takes part in the step.
SETS = ["sft.dropout=0", "sft.epochs=1", "sft.batch_size=3", "rm.batch_size=3",
        "ppo.episodes=48", "ppo.checkpoint_every=1"]


def env() -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
         "TOKENIZERS_PARALLELISM": "false"}
    e.pop("WORLD_SIZE", None)
    return e


def command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "instructrl.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "instructrl.cli", *args]


def launch(nproc: int, args: list[str]) -> str:
    proc = subprocess.run(command(nproc, args), env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def stage_args(stage: str, run: Path, recipe: Path, model: Path, rm: Path) -> list[str]:
    common = ["--out", str(run), "--recipe", str(recipe), *[a for s in SETS for a in ("--set", s)]]
    if stage == "sft":
        return ["sft", *common, "--init", str(model)]
    if stage == "rm":
        return ["rm", *common, "--init", str(model)]
    return ["ppo", *common, "--init", str(model), "--rm", str(rm)]


def descendants(pid: int) -> list[int]:
    """Every living process under `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it at once, as a lost machine would
    (torchrun starts its workers in sessions of their own)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def close(a: float, b: float, tol: float = 2e-4) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def compare_rows(one: list[dict], two: list[dict], what: str) -> None:
    assert len(one) == len(two) and one, (what, len(one), len(two))
    for r1, r2 in zip(one, two):
        keys = {k for k in r1 if not k.startswith("time/")}
        assert keys == {k for k in r2 if not k.startswith("time/")}, what
        for k in sorted(keys):
            assert close(float(r1[k]), float(r2[k])), (what, r1.get("step", r1.get(
                "iteration")), k, r1[k], r2[k])


@pytest.fixture
def two_runs(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"run{n}"
        _write_run(runs[n])
    return recipe, runs


def test_two_processes_equal_one(two_runs, tiny_model_dir, tiny_rm_dir):
    """SFT, RM and PPO-ptx with 2 processes give the 1-process metrics and weights."""
    recipe, runs = two_runs
    for stage in ("sft", "rm", "ppo"):
        for n, run in runs.items():
            launch(n, stage_args(stage, run, recipe, tiny_model_dir, tiny_rm_dir))
    for name in ("sft", "rm", "ppo-ptx"):
        compare_rows(read_metrics(runs[1] / name / "metrics.jsonl"),
                     read_metrics(runs[2] / name / "metrics.jsonl"), name)
    # Steps with a one-item last batch were among them (14 = ceil(40 / 3), 12 = ceil(34 / 3)).
    assert sum("loss/sft" in r for r in read_metrics(runs[2] / "sft" / "metrics.jsonl")) == 14
    assert len(read_metrics(runs[2] / "rm" / "metrics.jsonl")) == 12
    # The PPO rollouts were the same: the same samples were logged.
    s1 = read_metrics(runs[1] / "ppo-ptx" / "samples.jsonl")
    s2 = read_metrics(runs[2] / "ppo-ptx" / "samples.jsonl")
    assert [r["response"] for r in s1] == [r["response"] for r in s2]
    rm1 = load_file(str(runs[1] / "rm" / "model.safetensors"))
    rm2 = load_file(str(runs[2] / "rm" / "model.safetensors"))
    assert rm1.keys() == rm2.keys()
    for k in rm1:
        torch.testing.assert_close(rm1[k], rm2[k], rtol=1e-4, atol=1e-5, msg=k)
    p1 = load_causal_lm(runs[1] / "ppo-ptx").state_dict()
    p2 = load_causal_lm(runs[2] / "ppo-ptx").state_dict()
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-4, atol=1e-5, msg=k)
    # One writer: no stray checkpoint, one done marker per stage, no rank-1 files.
    for name in ("sft", "rm", "ppo-ptx"):
        assert (runs[2] / name / "done.json").exists()
        assert not (runs[2] / name / "checkpoint").exists()


@pytest.mark.parametrize("resume_nproc", [2, 1])
def test_sigkill_mid_ppo_under_two_processes_resumes_and_matches(two_runs, tiny_model_dir,
                                                                  tiny_rm_dir, resume_nproc):
    """Resumed under 2 processes or under 1 (the checkpoint does not depend on N)."""
    recipe, runs = two_runs
    longer = ["--set", "ppo.episodes=320"]  # 20 iterations: time to kill it in the middle
    launch(2, [*stage_args("ppo", runs[1], recipe, tiny_model_dir, tiny_rm_dir), *longer])
    killed = [*stage_args("ppo", runs[2], recipe, tiny_model_dir, tiny_rm_dir), *longer]
    proc = subprocess.Popen(command(2, killed), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = runs[2] / "ppo-ptx" / "metrics.jsonl"
    checkpoint = runs[2] / "ppo-ptx" / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and len(read_metrics(metrics)) >= 3:  # mid-run
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill_tree(proc)
    time.sleep(0.5)
    assert checkpoint.exists() and not (runs[2] / "ppo-ptx" / "done.json").exists()
    out = launch(resume_nproc, killed)
    assert "resuming after iteration" in out, out[:3000]
    compare_rows(read_metrics(runs[1] / "ppo-ptx" / "metrics.jsonl"), read_metrics(metrics),
                 "resumed ppo-ptx")


def test_ppo_batch_must_split_evenly(two_runs, tiny_model_dir, tiny_rm_dir):
    recipe, runs = two_runs
    args = stage_args("ppo", runs[2], recipe, tiny_model_dir, tiny_rm_dir)
    proc = subprocess.run(command(2, [*args, "--set", "ppo.batch_size=18", "--set",
                                      "ppo.mini_batch_size=9", "--set",
                                      "ppo.micro_batch_size=3"]),
                          env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode != 0
    assert "ppo.mini_batch_size=9 must be a multiple of the number of processes (2)" in proc.stdout


def test_blocks_of_a_batch_sample_what_the_whole_batch_samples(tiny_run, make_cfg,
                                                               tiny_model_dir, tiny_rm_dir):
    """What each process samples for its block of a batch (one process here, block by
    block) is the whole batch's sampling, row for row: same tokens, same log-probs."""
    cfg = make_cfg()
    assert cfg.ppo.sampler_draw == "cdf"
    cpu = torch.device("cpu")
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir, cpu)
    tok = load_tokenizer(tiny_model_dir)
    prompts = RunDir(tiny_run).prompts("train")[:16]
    whole = ppo.generate(m, tok, prompts, cfg.ppo, seed=3, device=cpu)
    lengths = set()
    for rows in (slice(0, 8), slice(8, 16)):
        part = ppo.generate(m, tok, prompts, cfg.ppo, seed=3, device=cpu, rows=rows)
        width = part.responses.shape[1]
        lengths.add(width)
        assert torch.equal(part.queries, whole.queries[rows])
        assert torch.equal(part.response_mask, whole.response_mask[rows, :width])
        assert not whole.response_mask[rows, width:].any()
        assert torch.equal(part.responses * part.response_mask,
                           whole.responses[rows, :width] * part.response_mask)
        torch.testing.assert_close(part.logprobs, whole.logprobs[rows, :width], rtol=1e-5,
                                   atol=1e-5)
    assert whole.response_mask.sum(1).unique().numel() > 1  # ragged: a real test of the split


def test_collect_under_two_processes_writes_what_one_writes(two_runs, tiny_model_dir):
    recipe, runs = two_runs
    for n, run in runs.items():
        launch(n, ["collect", "--out", str(run), "--recipe", str(recipe), "--policy",
                   f"sft={tiny_model_dir}", "--label", "none", "--set", "collect.k=3",
                   "--set", "collect.batch_size=8", "--set", "collect.n_prompts=20",
                   "--set", "collect.n_valid_prompts=4"])
    one = (runs[1] / "collect-0" / "samples.jsonl").read_text()
    two = (runs[2] / "collect-0" / "samples.jsonl").read_text()
    assert len(one.splitlines()) == 24  # 72 texts: 9 batches of 8, 5 on one process, 4 on the other
    assert one == two
    assert (runs[2] / "collect-0" / "done.json").exists()


def test_collect_killed_under_two_processes_resumes_in_one(two_runs, tiny_model_dir):
    # SIGKILL while both processes sample; one process carries on with the batches neither
    # had finished and writes what an uninterrupted run writes.
    recipe, runs = two_runs
    args = lambda run: ["collect", "--out", str(run), "--recipe", str(recipe), "--policy",
                        f"sft={tiny_model_dir}", "--label", "none", "--set", "collect.k=3",
                        "--set", "collect.batch_size=2", "--set", "collect.n_prompts=60",
                        "--set", "collect.n_valid_prompts=4", "--set",
                        "collect.max_new_tokens=32"]
    launch(1, args(runs[1]))
    proc = subprocess.Popen(command(2, args(runs[2])), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    partial = runs[2] / "collect-0" / "partial" / "sft"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logs = list(partial.glob("*.jsonl")) if partial.exists() else []
        if len(logs) == 2 and sum(len(p.read_text().splitlines()) for p in logs) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the collect ended before it could be killed"
    kill_tree(proc)
    assert not (runs[2] / "collect-0" / "samples.jsonl").exists()
    out = launch(1, args(runs[2]))
    assert "batches were sampled before; sampling the other" in out
    one = (runs[1] / "collect-0" / "samples.jsonl").read_text()
    assert one == (runs[2] / "collect-0" / "samples.jsonl").read_text()
    assert not (runs[2] / "collect-0" / "partial").exists()
