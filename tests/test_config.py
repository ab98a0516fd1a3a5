from pathlib import Path

import pytest

from instructrl.config import dump_config, load_config
from instructrl.errors import InputError


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg.ppo.kl_coef == 0.02 and cfg.ppo.ptx_coef == 27.8 and cfg.ppo.ema_decay == 0.992
    assert cfg.ppo.batch_size == 512 and cfg.ppo.mini_batch_size == 64 and cfg.ppo.gamma == 1.0
    assert cfg.sft.epochs == 16 and cfg.sft.dropout == 0.2 and cfg.sft.lr_final_ratio == 0.1
    assert cfg.rm.epochs == 1 and cfg.data.max_per_user == 200


def test_recipe_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sft:\n  epochs: 3\n  lr: 1\nppo:\n  betas: [0.9, 0.99]\n")
    cfg = load_config(path, ["sft.epochs=2", "ppo.missing_eos_score=-1", "rm.lr=1e-3"])
    assert cfg.rm.lr == 1e-3
    assert cfg.sft.epochs == 2 and cfg.sft.lr == 1.0 and isinstance(cfg.sft.lr, float)
    assert cfg.ppo.betas == (0.9, 0.99) and cfg.ppo.missing_eos_score == -1.0
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize("text, override, match", [
    ("sft:\n  epoch: 3\n", [], r"r.yaml: field 'sft.epoch': unknown key"),
    ("sfft:\n  epochs: 3\n", [], r"r.yaml: field 'sfft': unknown section"),
    ("sft:\n  epochs: three\n", [], r"r.yaml: field 'sft.epochs': expected int"),
    ("sft:\n  epochs: 2\n", ["sft.dropout=yes"], r"--set: field 'sft.dropout': expected float"),
    ("ppo:\n  batch_size: 100\n", [], r"r.yaml: field 'ppo.batch_size': must be divisible"),
])
def test_bad_recipe_names_key_and_file(tmp_path, text, override, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_config(path, override)


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(recipe, tmp_path):
    """Every recipe in recipes/ names only known keys with valid values (else InputError),
    and survives a dump -> load round trip."""
    cfg = load_config(recipe)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_a_stage_in_a_run_directory_keeps_the_runs_settings(tmp_path):
    """`instructrl sft|rm|collect|ppo|eval --out RUN`: --recipe if given, else RUN/config.yaml
    (what the pipeline ran with), else the paper's defaults; --set on top of either."""
    from argparse import Namespace

    from instructrl.cli import run_config

    run = tmp_path / "run"
    run.mkdir()

    def args(**kw):
        return Namespace(**{"out": str(run), "recipe": None, "overrides": [], **kw})

    assert run_config(args()) == load_config()
    with pytest.raises(InputError, match="recipe not found"):
        run_config(args(), require_run_config=True)
    (run / "config.yaml").write_text(dump_config(load_config(None, ["ppo.episodes=1920"])))
    assert run_config(args()).ppo.episodes == 1920
    assert run_config(args(overrides=["ppo.episodes=640"])).ppo.episodes == 640
    other = tmp_path / "other.yaml"
    other.write_text("ppo:\n  episodes: 5120\n")
    assert run_config(args(recipe=str(other))).ppo.episodes == 5120


def test_a_run_continued_with_other_settings_says_which(tmp_path, capsys):
    """config_changes lists exactly the differing settings; the pipeline (and the RM bench)
    print them on stderr before reusing a run directory's done stages, and say nothing when
    the settings are the same or the directory is new."""
    from instructrl.config import config_changes
    from instructrl.pipeline import write_run_config
    from instructrl.rundir import RunDir

    old = load_config(None, ["collect.k=6"])
    new = load_config(None, ["collect.k=9", "rm.epochs=3"])
    assert config_changes(old, new) == ["collect.k: 6 -> 9", "rm.epochs: 1 -> 3"]
    assert config_changes(new, new) == []
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    write_run_config(run, new, "pipeline")  # no config.yaml yet
    assert (run.root / "config.yaml").read_text() == dump_config(new)
    (run.root / "config.yaml").write_text(dump_config(old))
    write_run_config(run, old, "pipeline")
    assert capsys.readouterr().err == ""
    write_run_config(run, new, "pipeline")
    err = capsys.readouterr().err
    assert "collect.k: 6 -> 9; rm.epochs: 1 -> 3" in err and str(run.root) in err
    assert (run.root / "config.yaml").read_text() == dump_config(new)


ACCELERATE = sorted((Path(__file__).resolve().parents[1] / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_configs_load_and_set_the_recipes_precision(path, monkeypatch):
    """recipes/accelerate/*.yaml are accelerate config files (accelerate's own loader reads
    them), and `model.mixed_precision: auto` follows the precision `accelerate launch` exports
    from them."""
    import torch
    from accelerate.commands.config.config_args import load_config_from_file

    from instructrl.distributed import mixed_precision

    acc = load_config_from_file(str(path))
    assert acc.mixed_precision in ("no", "bf16", "fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", acc.mixed_precision)
    got = mixed_precision(load_config(None).model, torch.device("cpu"))
    assert got == {"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision)


def test_recipes_name_accelerate_configs_that_exist():
    import re

    named = {m for r in RECIPES for m in re.findall(r"recipes/accelerate/[\w.-]+\.yaml",
                                                    r.read_text())}
    assert named  # the GPU recipes show their launch commands
    root = Path(__file__).resolve().parents[1]
    assert all((root / n).exists() for n in named), named
