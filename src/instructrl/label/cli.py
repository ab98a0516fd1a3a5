"""`instructrl label`: serve the labeling app and administer it from the shell.

    instructrl label serve   --db sqlite:///labels.db --host 127.0.0.1 --port 8000
                             [--forwarded-allow-ips 10.0.0.5] [--secure-cookies]
    instructrl label create-admin NAME             (password asked twice, or --password-stdin)
    instructrl label create-labeler NAME [--heldout]
    instructrl label deactivate NAME | activate NAME | end-sessions NAME
    instructrl label set-password NAME             (ends the user's sessions)
    instructrl label import  --db ... [--run RUN | --prompts FILE] [--samples FILE ...]
                             (--run: RUN/data/prompts.jsonl and RUN/collect-*/samples.jsonl)
    instructrl label assign  --db ... --kind rank|demo|edit [--labelers a,b | --pool train|heldout|all]
                             [--overlap N] [--split test] [--limit N]
    instructrl label progress --db ...
    instructrl label export  --db ... --out RUN/data [--replace]

`export` writes demonstrations.jsonl and rankings.jsonl (training labelers) into OUT, which
`instructrl sft` / `instructrl rm` read as they are, the held-out labelers' into OUT/heldout/,
and labelers.jsonl; records already in those files are kept unless --replace.
The samples format is documented in `instructrl.label.samples`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from instructrl.errors import InputError

DB_HELP = "database URL: sqlite:///PATH (default sqlite:///labels.db) or postgresql://USER@HOST/DB"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--db", default="sqlite:///labels.db", help=DB_HELP)
        return c

    c = cmd("serve", "run the web app")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--secure-cookies", action="store_true",
                   help="mark cookies Secure (when served behind HTTPS)")
    c.add_argument("--forwarded-allow-ips", default=None, metavar="ADDRS",
                   help="comma-separated addresses or networks of reverse proxies whose "
                        "X-Forwarded-For/-Proto headers are believed (default: none; the "
                        "login limit counts per client address)")
    for name, role in (("create-admin", "admin"), ("create-labeler", "labeler")):
        c = cmd(name, f"create a user with role {role}")
        c.add_argument("name")
        c.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin")
        if role == "labeler":
            c.add_argument("--heldout", action="store_true",
                           help="held-out labeler: evaluation only, labels never train")
        c.set_defaults(role=role)
    for name, help_ in (("deactivate", "deactivate a user: no login, sessions end, no new "
                                       "tasks (labels stay)"),
                        ("activate", "let a deactivated user log in again"),
                        ("end-sessions", "log a user out everywhere"),
                        ("set-password", "set a new password (the user's sessions end)")):
        c = cmd(name, help_)
        c.add_argument("name")
        if name == "set-password":
            c.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of stdin")
    c = cmd("import", "import prompts and model samples (twice is a no-op)")
    c.add_argument("--run", help="run directory: imports RUN/data/prompts.jsonl and every "
                   "RUN/collect-*/samples.jsonl")
    c.add_argument("--prompts", help="a prompts.jsonl file")
    c.add_argument("--samples", action="append", default=[],
                   help="a samples file {prompt_id, responses: [{text, policy}]} (repeatable)")
    c = cmd("assign", "assign tasks to labelers")
    c.add_argument("--kind", required=True, choices=("rank", "demo", "edit"))
    c.add_argument("--labelers", help="comma-separated names (default: the --pool)")
    c.add_argument("--pool", choices=("train", "heldout", "all"),
                   help="who gets tasks, and whose tasks count towards the overlap (default: "
                        "the pool of --labelers, else train)")
    c.add_argument("--overlap", type=int, default=1,
                   help="labelers per item, counting every labeler of the pool (> 1 for "
                        "inter-labeler agreement)")
    c.add_argument("--split", choices=("train", "valid", "test"), help="only these prompts")
    c.add_argument("--limit", type=int, help="at most this many items")
    cmd("progress", "print progress per labeler and task kind, and agreement")
    c = cmd("export", "write demonstrations.jsonl and rankings.jsonl (+ heldout/, labelers.jsonl)")
    c.add_argument("--out", required=True, help="directory, e.g. RUN/data")
    c.add_argument("--replace", action="store_true",
                   help="overwrite the files with the app's records (default: keep the records "
                        "already there and add the app's new ones)")


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise InputError("the two passwords differ", field="password")
    return first


def run(args: argparse.Namespace) -> int:
    from instructrl.label import store
    from instructrl.label.db import make_engine

    if args.action == "serve":
        import logging

        import uvicorn
        # Logins, failed logins and submissions (never passwords or tokens) go to stderr.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

        from instructrl.label.app import create_app
        from instructrl.label.server import config
        app = create_app(args.db, secure_cookies=args.secure_cookies)
        print(f"instructrl label: serving {_safe_url(args.db)} on http://{args.host}:{args.port}"
              f"; forwarded headers believed from: {args.forwarded_allow_ips or 'no one'}",
              file=sys.stderr)
        uvicorn.Server(config(app, args.host, args.port, log_level="info",
                              forwarded_allow_ips=args.forwarded_allow_ips)).run()
        return 0
    engine = make_engine(args.db)
    if args.action in ("create-admin", "create-labeler"):
        store.create_user(engine, args.name, _password(args), args.role,
                          getattr(args, "heldout", False))
        print(f"created {args.role} {args.name!r}")
    elif args.action in ("deactivate", "activate"):
        n = store.set_active(engine, args.name, args.action == "activate")
        print(f"{args.action}d {args.name!r}" + (f"; {n} session(s) ended"
                                                 if args.action == "deactivate" else ""))
    elif args.action == "end-sessions":
        print(f"ended {store.end_sessions(engine, args.name)} session(s) of {args.name!r}")
    elif args.action == "set-password":
        n = store.set_password(engine, args.name, _password(args))
        print(f"new password for {args.name!r}; {n} session(s) ended")
    elif args.action == "import":
        if args.run and args.prompts:
            raise InputError("give --run or --prompts, not both", field="--prompts")
        prompts = Path(args.run) / "data" / "prompts.jsonl" if args.run else args.prompts
        samples = [Path(p) for p in args.samples]
        if args.run:
            samples += [p for p in sorted(Path(args.run).glob("collect-*/samples.jsonl"))
                        if p not in samples]
        if prompts is None and not samples:
            raise InputError("nothing to import: give --run, --prompts and/or --samples")
        for p in samples:
            print(f"samples: {p}")
        print(store.import_files(engine, prompts, samples))
    elif args.action == "assign":
        names = [n.strip() for n in args.labelers.split(",") if n.strip()] \
            if args.labelers else None
        n = store.assign(engine, args.kind, names, pool=args.pool, overlap=args.overlap,
                         split=args.split, limit=args.limit)
        print(f"assigned {n} new {args.kind} tasks")
    elif args.action == "progress":
        rows = store.progress(engine)
        print(f"{'labeler':<20} {'kind':<6} {'assigned':>8} {'done':>6} {'skipped':>8} "
              f"{'pending':>8}")
        for r in rows:
            name = r["labeler"] + (" (held-out)" if r["heldout"] else "")
            print(f"{name:<20} {r['kind'] or '-':<6} {r['assigned']:>8} {r['done']:>6} "
                  f"{r['skipped']:>8} {r['pending']:>8}")
        print(json.dumps({"agreement": store.agreement_report(engine)}, indent=1))
    elif args.action == "export":
        for path, n in store.export_dir(engine, args.out, replace=args.replace).items():
            print(f"{path}: {n} records")
    return 0


def _safe_url(url: str) -> str:
    """The URL without a password, for printing."""
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)
