"""`instructrl data prepare`: raw prompts -> RUN/data/prompts.jsonl (deduped, capped, split)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import load_config
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.prompts import prepare
from instructrl.data.records import Labeler, Prompt
from instructrl.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = sub.add_parser("prepare", help="dedupe, cap per user, split by user ID",
                          description="Deduplicate prompts sharing a long common prefix, cap "
                                      "prompts per user, split train/valid/test by user ID, "
                                      "and mark the held-out labeler pool.")
    add_common(prep)
    prep.add_argument("--in", dest="inp", default=None,
                      help="raw prompts jsonl (default: RUN/data/raw_prompts.jsonl)")
    prep.add_argument("--heldout-labelers", default=None, metavar="ID,ID",
                      help="labeler IDs to mark held out in RUN/data/labelers.jsonl")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    data_dir = Path(args.out) / "data"
    src = Path(args.inp) if args.inp else data_dir / "raw_prompts.jsonl"
    prompts = read_records(src, Prompt.from_dict)
    out, report = prepare(prompts, cfg.data)
    labelers_path = data_dir / "labelers.jsonl"
    labelers = read_records(labelers_path, Labeler.from_dict) if labelers_path.exists() else []
    if args.heldout_labelers is not None:
        ids = {x.strip() for x in args.heldout_labelers.split(",") if x.strip()}
        known = {lab.id for lab in labelers}
        new = sorted(ids - known)
        labelers = [dataclasses.replace(lab, heldout=lab.id in ids) for lab in labelers]
        labelers += [Labeler(id=i, heldout=True) for i in new]
    # Validate everything before writing anything.
    if labelers and not any(not lab.heldout for lab in labelers):
        raise InputError("every labeler is held out: nobody is left to label training data",
                         path=str(labelers_path))
    write_records(data_dir / "prompts.jsonl", out)
    if labelers:
        write_records(labelers_path, labelers)
    for line in report.lines():
        print(line)
    if labelers:
        held = [lab.id for lab in labelers if lab.heldout]
        print(f"labelers: {len(labelers) - len(held)} training, {len(held)} held out "
              f"({', '.join(held) or 'none'})")
    print(f"wrote {data_dir / 'prompts.jsonl'}")
    return 0
