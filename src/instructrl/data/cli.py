"""`instructrl data prepare`: raw prompts -> RUN/data/prompts.jsonl (deduped, capped, split).
`instructrl data import`: a user's own data (files or hub ids in the recipe's `sources`, or
named on the command line) -> RUN/data/{prompts,demonstrations,rankings,ptx}.jsonl (sources.py).
`instructrl data import-pairs`: chosen/rejected pairs (HH-RLHF) -> K = 2 rankings (pairs.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import load_config
from instructrl.data.formats import FORMATS, KINDS
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
    add_import_arguments(sub)
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


IMPORT_HELP = """\
Read prompts, demonstrations, preferences and pretraining text from your files or Hugging Face
hub data sets, check every row, split the prompts train/valid/test (by user ID, or by prompt
when the data has none), and write RUN/data/prompts.jsonl, demonstrations.jsonl,
rankings.jsonl and ptx.jsonl. Nothing is written if any row is bad.

Either the recipe's `sources` section (see SourcesConfig; RUN/config.yaml when the run has
one and no --recipe is given):

  sources:
    demonstrations: [{path: alpaca_data.json}, {path: databricks/databricks-dolly-15k}]
    preferences: [{path: HuggingFaceH4/ultrafeedback_binarized, split: train_prefs}]
    ptx: [{path: wikitext.parquet, limit: 20000}]
    valid_fraction: 0.1

or files on the command line (--format, --column, ... then apply to each of them; use a recipe
for different settings per source):

  instructrl data import --out runs/mine --demonstrations qa.csv \\
      --column prompt=question --column response=answer --preferences pairs.jsonl

formats (--format, default auto: told from the columns):
  messages       {messages: [{role, content}, ...]} (or ShareGPT conversations)
  alpaca         instruction, input, output
  dolly          instruction, context, response, category
  self-instruct  instruction, instances: [{input, output}]
  pairs          prompt, chosen, rejected (strings, or chosen/rejected message lists)
  hh             chosen, rejected HH-RLHF dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...")
  rankings       prompt, responses, ranking (the project's K-wise ranking record)
  prompts        prompt (or text), response (optional)
  text           text (pretraining text for --ptx)
Every format also reads user_id, category, style and labeler_id columns when present.
--column FIELD=COLUMN reads FIELD from another column; FIELD= ignores a column.

Files: .jsonl, .jsonl.gz, .json, .csv, .tsv, .parquet; anything else is a hub id (through the
local Hugging Face cache when offline) or a data directory for datasets.load_dataset.
Existing RUN/data files this import would write are an error unless --force; files it does
not write (e.g. ptx.jsonl when no --ptx) are left as they are."""


def add_import_arguments(sub) -> None:
    imp = sub.add_parser("import", help="your own data (files or hub data sets) into RUN/data",
                         description=IMPORT_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(imp)
    for kind, what in (("prompts", "prompts (PPO and collection prompts)"),
                       ("demonstrations", "demonstrations (SFT)"),
                       ("preferences", "preference pairs or rankings (RM)"),
                       ("ptx", "pretraining text (PPO-ptx)")):
        imp.add_argument(f"--{kind}", action="append", default=[], metavar="SRC",
                         help=f"a file or hub id of {what}; repeatable. Any of these replaces "
                              f"the recipe's sources")
    imp.add_argument("--format", default="auto", choices=("auto",) + FORMATS, metavar="FORMAT",
                     help="format of the sources given here (default auto)")
    imp.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                     help="read FIELD from COLUMN (FIELD= ignores it); repeatable")
    imp.add_argument("--split", default=None, help="hub dataset split (default train)")
    imp.add_argument("--name", default=None, help="hub dataset config name")
    imp.add_argument("--data-dir", default=None, help="hub dataset sub-directory")
    imp.add_argument("--limit", type=int, default=None, help="read at most N rows of each")
    imp.add_argument("--category", default=None,
                     help="category of prompts whose rows have none (default other)")
    imp.add_argument("--labeler", default=None,
                     help="labeler id of demonstrations and rankings whose rows have none "
                          "(default: hh for HH data, else the file or data set name)")
    imp.add_argument("--force", action="store_true", help="replace existing RUN/data files")


def quick_sources(args: argparse.Namespace) -> dict[str, tuple[dict, ...]] | None:
    """The sources named on the command line, as SourcesConfig entries; None if none."""
    if not any(getattr(args, k) for k in KINDS):
        return None
    columns: dict[str, str | None] = {}
    for item in args.column:
        name, eq, col = item.partition("=")
        if not eq or not name.strip():
            raise InputError(f"expected FIELD=COLUMN, got {item!r}", field="--column")
        columns[name.strip()] = col.strip() or None
    settings = {"format": args.format, "split": args.split, "name": args.name,
                "data_dir": args.data_dir, "limit": args.limit, "columns": columns or None,
                "category": args.category, "labeler": args.labeler}
    settings = {k: v for k, v in settings.items() if v is not None}
    return {k: tuple({"path": p, **settings} for p in getattr(args, k)) for k in KINDS}


def run_import(args: argparse.Namespace) -> int:
    from instructrl.cli import run_config
    from instructrl.data.sources import import_sources
    from instructrl.rundir import RunDir

    cfg = run_config(args)
    quick = quick_sources(args)
    if quick is not None:
        cfg = dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, **quick))
    for line in import_sources(cfg, RunDir(args.out), force=args.force):
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "import-pairs":
        return run_import_pairs(args)
    if args.action == "import":
        return run_import(args)
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
