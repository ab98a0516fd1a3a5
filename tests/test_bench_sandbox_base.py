"""bench/sandbox_base.py runs on the shipped base model and prints each of its probes (it
asserts nothing itself: its figures are for reading, see its docstring)."""

import re
import runpy
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sandbox_base.py"


def test_sandbox_base_bench_prints_every_probe(capsys):
    mod = runpy.run_path(str(BENCH), run_name="bench_sandbox_base")  # not __main__: no run
    assert mod["main"](["--n", "8", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 sandbox prompts, sampled at temperature 1" in out
    assert re.search(r"public task 'qa' \(two-shot, held-out items, greedy\): +[\d.]+ % of 100",
                     out)
    assert re.search(r"fact recall as web text .*: \d+/120 true", out)
    # 20 spare names x 3 attributes; the counts are the probe's, whatever they are.
    m = re.search(r"copies its name (\d+)/60, gives the text's value (\d+)/60", out)
    assert m and all(0 <= int(g) <= 60 for g in m.groups()), out[-500:]
