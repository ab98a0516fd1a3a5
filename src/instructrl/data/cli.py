"""`instructrl data prepare`: raw prompts -> RUN/data/prompts.jsonl (deduped, capped, split).
`instructrl data import-pairs`: chosen/rejected pairs (HH-RLHF) -> K = 2 rankings (pairs.py)."""

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
    imp = sub.add_parser("import-pairs", help="chosen/rejected pairs (HH-RLHF) as K = 2 rankings",
                         description="Read {chosen, rejected} dialogues (Anthropic HH-RLHF "
                                     "format) from a .jsonl/.jsonl.gz file or a Hugging Face "
                                     "hub id and write RUN/data/prompts.jsonl, rankings.jsonl "
                                     "(K = 2) and demonstrations.jsonl (the chosen responses of "
                                     "train prompts, a stand-in). See instructrl.data.pairs.")
    imp.add_argument("--in", dest="inp", required=True, metavar="SRC",
                     help="a .jsonl or .jsonl.gz file, or a hub dataset id "
                          "(e.g. Anthropic/hh-rlhf)")
    imp.add_argument("--out", required=True, help="run directory (runs/<name>)")
    imp.add_argument("--valid-fraction", type=float, default=0.2,
                     help="fraction of distinct prompts put in the valid split (default 0.2)")
    imp.add_argument("--category", default="other", help="category of every prompt (default other)")
    imp.add_argument("--limit", type=int, default=None, help="read at most N pairs")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split and response order")
    imp.add_argument("--split", default="train", help="hub dataset split (hub ids only)")
    imp.add_argument("--hub-data-dir", default=None,
                     help="hub dataset sub-directory, e.g. harmless-base (hub ids only)")
    imp.add_argument("--force", action="store_true", help="replace existing RUN/data files")


def run(args: argparse.Namespace) -> int:
    if args.action == "import-pairs":
        return run_import_pairs(args)
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


def run_import_pairs(args: argparse.Namespace) -> int:
    from instructrl.data.pairs import import_pairs
    imported = import_pairs(args.inp, args.out, valid_fraction=args.valid_fraction,
                            category=args.category, seed=args.seed, limit=args.limit,
                            split=args.split, hub_data_dir=args.hub_data_dir, force=args.force)
    for line in imported.lines():
        print(line)
    print(f"wrote {Path(args.out) / 'data'}/{{prompts,rankings,demonstrations}}.jsonl")
    return 0
