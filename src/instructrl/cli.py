"""`instructrl`: one command, a subcommand per stage.

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen subcommand's module is imported, so `instructrl --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from instructrl.errors import InputError

# name -> (module, one-line help). Only commands that exist are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("instructrl.data.cli", "prepare prompt sets (dedupe, cap, split by user); import "
                                    "your own data (files or hub data sets), pairwise data"),
    "sandbox": ("instructrl.sandbox.cli", "generate the offline sandbox world's data"),
    "pretrain": ("instructrl.stages.pretrain", "train the sandbox tokenizer and base model"),
    "sft": ("instructrl.stages.sft", "supervised fine-tuning on demonstrations; select epoch"),
    "rm": ("instructrl.stages.reward", "train the K-wise reward model on rankings"),
    "collect": ("instructrl.stages.collect", "sample K responses per prompt for ranking"),
    "ppo": ("instructrl.stages.ppo", "PPO(-ptx) against the reward model"),
    "pipeline": ("instructrl.pipeline", "every stage through one run directory, iterated"),
    "eval": ("instructrl.evaluate.cli", "the paper's evaluation by every judge that applies "
                                        "(held-out labelers, a held-out RM, people), "
                                        "TruthfulQA, toxicity, bias, alignment tax; report"),
    "demo": ("instructrl.demo", "the pipeline on the sandbox, evaluation and report"),
    "reproduce": ("instructrl.reproduce", "the paper's findings measured in the sandbox, "
                                          "next to the paper's figures"),
    "label": ("instructrl.label.cli", "the labeling web app: serve, import, assign, export"),
}


# Commands that run as N data-parallel processes under torchrun / accelerate launch
# (instructrl.distributed; eval shares out its benchmarks' batches); every other command
# refuses to.
DATA_PARALLEL = frozenset({"sft", "rm", "ppo", "collect", "eval", "pipeline"})


def add_common(p: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """Arguments every stage takes: the run directory, a recipe and overrides."""
    p.add_argument("--out", required=out_required, help="run directory (runs/<name>)")
    p.add_argument("--recipe", default=None,
                   help="YAML recipe (e.g. recipes/sandbox.yaml); default: RUN/config.yaml "
                        "when the run has one, else the paper's settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sft.epochs=2 (repeatable)")


def run_config(args: argparse.Namespace, *, require_run_config: bool = False,
               record: str | None = None):
    """The settings a command on a run directory works with: `--recipe` when given, else the
    run's own RUN/config.yaml (what `instructrl pipeline`/`demo` ran with), else the paper
    defaults; then the `--set` overrides. So a stage rerun inside a pipeline's run directory
    keeps that run's settings unless told otherwise. A stage (`record` = its name) writes
    them to RUN/config.yaml, so a run built stage by stage has one as a pipeline's does."""
    from pathlib import Path

    from instructrl.config import load_config

    recipe = args.recipe
    own = Path(args.out) / "config.yaml"
    if recipe is None and (require_run_config or own.exists()):
        recipe = own
        print(f"settings: {own} (the run's own; --recipe to use others)", file=sys.stderr)
    cfg = load_config(recipe, args.overrides)
    from instructrl.distributed import runtime
    if record is not None and runtime().is_main:  # one process writes
        from instructrl.rundir import RunDir, write_run_config
        write_run_config(RunDir(args.out), cfg, record)
    return cfg


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="instructrl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="InstructGPT's pipeline (SFT -> K-wise RM -> PPO-ptx) for Hugging Face "
                    "causal language models.",
        epilog=f"commands:\n{lines}\n\n`instructrl COMMAND --help` for each command's options.")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name = argv[0]
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and name not in DATA_PARALLEL:
        # Each of N processes would do the whole command and all would write into the same
        # run directory (seen: 38 interleaved metric rows before the training stages shared
        # their work).
        print(f"instructrl {name}: error: launched as {world} processes (WORLD_SIZE={world}); "
              f"only {', '.join(sorted(DATA_PARALLEL))} share their work across processes. Run "
              f"`instructrl {name}` without torchrun / accelerate launch.", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    if "transformers" in sys.modules:  # our own progress bars say what is happening
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    parser = argparse.ArgumentParser(prog=f"instructrl {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except InputError as e:
        print(f"instructrl {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
