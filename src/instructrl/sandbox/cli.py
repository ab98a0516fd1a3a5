"""`instructrl sandbox generate|demonstrate`: the offline world's data for a run directory."""

from __future__ import annotations

import argparse
import time

from instructrl.cli import add_common
from instructrl.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = sub.add_parser(
        "generate", help="write raw prompts, labelers and ptx text",
        description="Write RUN/data/raw_prompts.jsonl (simulated users' prompts, split unset), "
                    "RUN/data/labelers.jsonl (training and held-out labelers) and "
                    "RUN/data/ptx.jsonl (pretraining text for the ptx loss).")
    add_common(gen)
    dem = sub.add_parser(
        "demonstrate", help="write labelers' demonstrations for train/valid prompts",
        description="Read RUN/data/prompts.jsonl (after `instructrl data prepare`) and write "
                    "RUN/data/demonstrations.jsonl: one demonstration per train/valid prompt "
                    "by a training labeler; prompts with unclear intent are skipped.")
    add_common(dem)


def run(args: argparse.Namespace) -> int:
    from instructrl.sandbox.generate import demonstrate, generate

    cfg = load_config(args.recipe, args.overrides).sandbox
    t0 = time.time()
    if args.action == "generate":
        info = generate(cfg, args.out)
        print(f"sandbox seed {cfg.seed}: {info['prompts']} prompts by {info['users']} users "
              f"({info['unclear']} with unclear intent)")
        print("categories: " + ", ".join(f"{k} {v}" for k, v in info["categories"].items()))
        print("styles: " + ", ".join(f"{k} {v}" for k, v in info["styles"].items()))
        print(f"labelers: {info['labelers']} training, {info['heldout_labelers']} held out; "
              f"ptx documents: {info['ptx_docs']}")
        print(f"wrote {args.out}/data/raw_prompts.jsonl labelers.jsonl ptx.jsonl "
              f"({time.time() - t0:.1f}s)")
    else:
        info = demonstrate(cfg, args.out)
        print(f"{info['demonstrations']} demonstrations "
              f"({info['skipped_unclear']} unclear prompts skipped); by labeler: "
              + ", ".join(f"{k} {v}" for k, v in info["by_labeler"].items()))
        print(f"wrote {args.out}/data/demonstrations.jsonl ({time.time() - t0:.1f}s)")
    return 0
