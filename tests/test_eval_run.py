"""`instructrl eval` over whole runs: a real-model run made from the tiny random model (not the
sandbox's prompts: the sandbox's judges must not run, and the command says so), with every
benchmark on fixtures and a held-out RM; a sandbox run (the sandbox world's prompts) where its
judges run; which judges ran and were skipped; the report and --compare. In-process and small:
a few seconds of model time each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from instructrl.cli import main as cli_main
from instructrl.rundir import RunDir

from conftest import write_sandbox_run

FIX = Path(__file__).resolve().parent / "fixtures"


def eval_recipe(tmp: Path, **extra: str) -> Path:
    settings = {
        "n_prompts": "6", "max_new_tokens": "6", "max_prompt_tokens": "32",
        "truthfulqa": json.dumps(str(FIX / "truthfulqa_sample.csv")),
        "truthfulqa_max_new_tokens": "4",
        "rtp": json.dumps(str(FIX / "rtp" / "rtp_sample.jsonl")), "n_rtp": "3",
        "n_samples": "2", "rtp_max_new_tokens": "4", "toxicity_scorer": "profanity-check",
        "crows_pairs": json.dumps(str(FIX / "crows_sample.csv")),
        "winogender": json.dumps(str(FIX / "winogender_sample.tsv")),
        "lm_eval_tasks": "[tiny_qa]", "lm_eval_include": json.dumps(str(FIX / "lm_eval")),
        "heldout_text": json.dumps(str(FIX / "heldout_text.txt")), "batch_size": "8"}
    settings.update(extra)
    body = ", ".join(f"{k}: {v}" for k, v in settings.items())
    path = tmp / "eval-recipe.yaml"
    path.write_text(f"eval: {{{body}}}\n")
    return path


@pytest.fixture
def real_run(tiny_run, tiny_model_dir, tiny_rm_dir, tmp_path) -> Path:
    """A run of a user's own model and data: prompts without the sandbox's task specs; SFT is
    the tiny model, PPO-ptx a perturbed copy; the run's own RM under RUN/rm."""
    from instructrl.modeling import load_causal_lm, load_tokenizer

    torch.manual_seed(3)
    ppo = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for p in ppo.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ppo.save_pretrained(tiny_run / "ppo-ptx")
    load_tokenizer(tiny_model_dir).save_pretrained(tiny_run / "ppo-ptx")
    shutil.copytree(tiny_rm_dir, tiny_run / "rm")
    (tiny_run / "pipeline.json").write_text(json.dumps(
        {"policies": {"sft": str(tiny_model_dir), "ppo-ptx": "ppo-ptx"}, "rm": "rm",
         "base": str(tiny_model_dir)}))
    return tiny_run


def test_eval_on_a_real_model_run_runs_every_benchmark_and_never_the_sandbox(
        real_run, tiny_rm_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = eval_recipe(tmp_path, heldout_rm=json.dumps(str(tiny_rm_dir)))
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    res = json.loads((real_run / "eval" / "results.json").read_text())
    assert list(res["policies"]) == ["base", "sft", "ppo-ptx"] and res["sandbox_run"] is False
    ran = {j["id"]: j["kind"] for j in res["judges"]["ran"]}
    assert ran == {"heldout-rm": "heldout-rm", "truthfulqa-mc": "likelihood",
                   "truthfulqa-auto": "automatic-metric",
                   "toxicity-alt-profanity-check": "classifier",
                   "bias-likelihood": "likelihood", "lm-eval": "lm-eval",
                   "heldout-lm-loss": "likelihood"}
    skipped = {s["id"]: s["reason"] for s in res["judges"]["skipped"]}
    assert "not a sandbox run" in skipped["sandbox"]
    assert "judges that ran:" in out and "skipped sandbox: not a sandbox run" in out
    # No sandbox figure anywhere; the preference figures are the held-out RM's only.
    assert "sandbox" not in res and list(res["preference"]) == ["heldout-rm"]
    pref = res["preference"]["heldout-rm"]
    assert pref["judge"]["path"] == str(tiny_rm_dir) and pref["n_prompts"] == 6
    for name in res["policies"]:
        w = pref["policies"][name]["win_rate"]
        assert w["n"] == 6 and w["wins"] + w["ties"] + w["losses"] == 6
        assert set(pref["policies"][name]["by_category"]) <= {"open_qa", "generation"}
        assert res["truthfulqa"]["policies"][name]["mc1"]["n"] == 4
        tox = res["toxicity"]["policies"][name]
        assert tox["plain"]["mean_toxicity"]["n"] == 6 and "respectful" in tox
        assert res["bias"]["crows_pairs"]["policies"][name]["all"]["n"] == 6
        assert res["bias"]["winogender"]["policies"][name]["entropy"]["n"] == 4
        assert res["tax"]["lm_eval"]["policies"][name]["tiny_qa"]["acc"]["n"] == 8
    # The tax deltas: against the base model and SFT (sft IS the base model here).
    loss = res["tax"]["heldout_lm_loss"]["policies"]
    assert res["tax"]["deltas"]["vs_base"]["sft"]["held-out LM loss"] == pytest.approx(0.0)
    assert res["tax"]["deltas"]["vs_sft"]["ppo-ptx"]["held-out LM loss"] == \
        pytest.approx(loss["ppo-ptx"] - loss["sft"])
    page = (real_run / "eval" / "report.html").read_text()
    assert page.count("<figure class='plot'") >= 8 and "src='http" not in page
    assert "held-out reward model" in page and "alt-profanity-check" in page


def test_eval_refuses_the_sandbox_judges_and_the_own_rm_on_a_real_run(real_run, tmp_path,
                                                                        capsys):
    recipe = eval_recipe(tmp_path)
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(recipe),
                     "--set", "eval.judges=[sandbox]"]) == 2
    assert "judge only sandbox runs" in capsys.readouterr().err
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(recipe),
                     "--set", f"eval.heldout_rm={real_run / 'rm'}"]) == 2
    assert "own reward model" in capsys.readouterr().err
    # Without any preference judge: said, not invented.
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(recipe),
                     "--set", "eval.judges=[bias]"]) == 0
    res = json.loads((real_run / "eval" / "results.json").read_text())
    assert "preference" not in res
    assert any(s["id"] == "preference" and "--to-label" in s["reason"]
               for s in res["judges"]["skipped"])


@pytest.fixture
def sandbox_run(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The sandbox world's prompts (generated and prepared as the pipeline does), with the tiny
    model standing in for its policies."""
    return write_sandbox_run(
        tmp_path, "sandbox: {n_prompts: 200, n_users: 20, n_labelers: 3, "
                  "n_heldout_labelers: 2, n_ptx_docs: 10}\n"
                  "eval: {n_prompts: 8, max_new_tokens: 6, max_prompt_tokens: 32, n_tax: 10}\n",
        {"sft": tiny_model_dir, "ppo-ptx": tiny_model_dir}, tiny_model_dir)


def test_eval_on_a_sandbox_run_uses_its_judges_and_compare(sandbox_run, real_run, tmp_path,
                                                           capsys):
    from instructrl.config import load_config
    from instructrl.evaluate.sandbox_eval import is_sandbox_run
    from instructrl.evaluate.suite import sandbox_view

    run, recipe = sandbox_run
    assert is_sandbox_run(load_config(recipe), RunDir(run)) == (True, "")
    other = load_config(recipe, ["sandbox.seed=5"])
    ok, why = is_sandbox_run(other, RunDir(run))
    assert not ok and "sandbox.seed=5" in why
    assert cli_main(["eval", "--out", str(run), "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    res = json.loads((run / "eval" / "results.json").read_text())
    assert res["sandbox_run"] and {j["id"] for j in res["judges"]["ran"]} >= {
        "sandbox-labelers", "sandbox-checks"}
    skipped = {s["id"] for s in res["judges"]["skipped"]}
    assert {"truthfulqa", "toxicity", "heldout_rm"} <= skipped
    view = sandbox_view(res)
    from instructrl.evaluate.sandbox_eval import test_prompts
    n = len(test_prompts(RunDir(run), 8))  # held-out users' prompts with a clear intent
    assert set(view["policies"]) == {"base", "sft", "ppo-ptx"} and view["n_prompts"] == n > 0
    for r in view["policies"].values():
        assert 0 <= r["win_rate"]["mean"] <= 1 and 1 <= r["likert"] <= 7
        assert set(r["tax"]) == {"heldout_lm_loss", "public_task_accuracy"}
    # sft and ppo-ptx are the same model with the same samples: identical figures but their
    # own labeler salts; the baseline is judged against its second sample.
    assert res["preference"]["sandbox-labelers"]["policies"]["sft"]["win_rate"]["n"] == n
    assert "win vs SFT (95% CI)" in out and "held-out labelers" in out

    # --compare: both runs side by side, in the terminal and one HTML page.
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(eval_recipe(tmp_path)),
                     "--set", "eval.judges=[bias]"]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--compare", str(run), str(real_run)]) == 0
    out = capsys.readouterr().out
    assert f"== {run}" in out and f"== {real_run}" in out
    page = (run / "eval" / f"compare-{real_run.name}.html").read_text()
    assert str(run) in page and str(real_run) in page and "data:image/png;base64" in page


def test_a_run_built_stage_by_stage_is_evaluated_from_its_done_stages(tiny_run, tmp_path):
    from instructrl.config import load_config
    from instructrl.errors import InputError
    from instructrl.evaluate.suite import run_policies

    run = RunDir(tiny_run)
    cfg = load_config(eval_recipe(tmp_path))
    with pytest.raises(InputError, match="no finished SFT stage"):
        run_policies(cfg, run)
    run.mark_done("sft", init="/models/base")
    run.mark_done("rm")
    for stage in ("ppo-ptx", "ppo", "ppo-ptx-r1", "rm-r1"):
        run.mark_done(stage)
    policies, summary = run_policies(cfg, run)
    assert policies == {"base": "/models/base", "sft": str(tiny_run / "sft"),
                        "ppo-ptx": str(tiny_run / "ppo-ptx-r1"), "ppo": str(tiny_run / "ppo")}
    assert summary["rm"] == "rm-r1"


@pytest.mark.parametrize("which", ["real", "sandbox"])
def test_a_killed_eval_resumes_with_the_policies_it_had_not_finished(
        which, real_run, sandbox_run, tmp_path, monkeypatch):
    # Every benchmark (real run: TruthfulQA, toxicity, bias, lm-eval, held-out text and RM;
    # sandbox run: its judges) for the base model, then a kill while the next policy loads;
    # the rerun loads only the policies not finished and writes the uninterrupted results.
    import instructrl.modeling as modeling
    from conftest import Crash

    if which == "real":
        run, args = real_run, ["--recipe", str(eval_recipe(tmp_path)),
                               "--set", f"eval.heldout_rm={tmp_path / 'held-rm'}"]
        shutil.copytree(real_run / "rm", tmp_path / "held-rm")
        (run / "rm").rename(run / "rm-own")  # (the run's own RM is not a held-out judge)
        (run / "pipeline.json").write_text(
            (run / "pipeline.json").read_text().replace('"rm": "rm"', '"rm": "rm-own"'))
    else:
        run, recipe = sandbox_run
        args = ["--recipe", str(recipe)]
    assert cli_main(["eval", "--out", str(run), *args]) == 0
    whole = json.loads((run / "eval" / "results.json").read_text())
    (run / "eval" / "results.json").unlink()

    real, loads = modeling.load_causal_lm, []

    def load(*a, **kw):
        loads.append(a[0])
        if kill and len(loads) == 2:
            raise Crash
        return real(*a, **kw)

    monkeypatch.setattr(modeling, "load_causal_lm", load)
    kill = True
    with pytest.raises(Crash):
        cli_main(["eval", "--out", str(run), *args])
    assert [p.name for p in (run / "eval" / "partial").iterdir()] == ["base.json"]
    loads.clear()
    kill = False
    assert cli_main(["eval", "--out", str(run), *args]) == 0
    assert len(loads) == len(whole["policies"]) - 1  # every policy but the base model
    again = json.loads((run / "eval" / "results.json").read_text())
    for res in (whole, again):
        res.pop("created")
        res.pop("seconds")
    assert again == whole
    assert not (run / "eval" / "partial").exists()
