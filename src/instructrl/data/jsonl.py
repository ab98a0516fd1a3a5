"""JSON-lines IO. Reading validates every line before returning anything; writing is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from instructrl.errors import InputError

T = TypeVar("T")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temp file in the same directory and a rename, so a
    reader (or a crash) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_lines(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is an
    InputError naming `source` and the line. The one JSON-lines parser of the project (run
    files, users' data files, the labeling app's imports)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg} at column {e.colno})",
                             path=source, line=lineno) from None
        except RecursionError:
            raise InputError("not valid JSON (nested too deeply)", path=source,
                             line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError("a line must be a JSON object", path=source, line=lineno)
        yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a file (`parse_lines`); a missing
    file is an InputError naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    with path.open(encoding="utf-8") as f:
        return list(parse_lines(f, str(path)))


def read_records(path: str | os.PathLike, parse: Callable[[dict], T]) -> list[T]:
    """Parse every line with `parse` (e.g. `Prompt.from_dict`). Errors name file:line:field."""
    out = []
    for lineno, obj in read_jsonl(path):
        try:
            out.append(parse(obj))
        except InputError as e:
            raise InputError(e.message, path=str(path), line=lineno, field=e.field) from None
    return out


def write_records(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write records (objects with `to_dict()`, or dicts) as JSON lines."""
    lines = [json.dumps(r if isinstance(r, dict) else r.to_dict(), ensure_ascii=False)
             for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_record_files(directory: str | os.PathLike, files: dict[str, Iterable[Any]]
                       ) -> dict[str, int]:
    """Write several JSON-lines files into `directory` as one step: every file to a temp name
    first, then all renamed, so a failure while writing (a bad record, a full disk) leaves
    each old file as it was and no new one half-written. Returns lines written per file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmps: dict[str, str] = {}
    counts: dict[str, int] = {}
    try:
        for name, records in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            tmps[name] = tmp
            n = 0
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r if isinstance(r, dict) else r.to_dict(),
                                       ensure_ascii=False) + "\n")
                    n += 1
                f.flush()
                os.fsync(f.fileno())
            counts[name] = n
        for name, tmp in tmps.items():
            os.replace(tmp, directory / name)
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
    return counts
