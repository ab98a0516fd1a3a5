import json
import subprocess
import sys

from instructrl.config import DataConfig
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.prompts import cap_per_user, dedupe, prepare
from instructrl.data.records import Labeler, Prompt


def _p(i, user, text, category="open_qa"):
    return Prompt(id=f"p{i}", user_id=user, text=text, category=category)


def test_dedupe_by_common_prefix():
    long = "please write a short story about a dragon who lives in the mountains and "
    ps = [_p(0, "u1", long + "eats fish"), _p(1, "u2", long + "eats rocks"),
          _p(2, "u1", "Hi  there"), _p(3, "u3", "hi there"), _p(4, "u3", "hi there!")]
    kept = dedupe(ps, prefix_chars=40)
    assert [p.id for p in kept] == ["p0", "p2", "p4"]


def test_cap_per_user_is_deterministic_and_keeps_order():
    ps = [_p(i, "heavy", f"q{i}") for i in range(500)] + [_p(1000, "light", "x")]
    a, b = cap_per_user(ps, 200, seed=1), cap_per_user(ps, 200, seed=1)
    assert a == b and len(a) == 201
    assert [p.id for p in a] == sorted((p.id for p in a), key=lambda s: int(s[1:]))
    assert cap_per_user(ps, 200, seed=2) != a


def test_split_has_no_shared_user():
    ps = [_p(i, f"u{i % 37}", f"question number {i}") for i in range(800)]
    out, report = prepare(ps, DataConfig(max_per_user=15, prefix_chars=64, seed=3))
    users = {s: {p.user_id for p in out if p.split == s} for s in ("train", "valid", "test")}
    assert all(users[s] for s in users)
    assert not (users["train"] & users["valid"] or users["train"] & users["test"]
                or users["valid"] & users["test"])
    assert max(sum(p.user_id == u for p in out) for u in users["train"]) == 15
    assert sum(report.per_split.values()) == len(out) == report.n_after_cap


def test_cli_prepare(tmp_path):
    run = tmp_path / "run"
    ps = [_p(i, f"u{i % 10}", f"question number {i}") for i in range(100)]
    write_records(run / "data" / "raw_prompts.jsonl", ps)
    write_records(run / "data" / "labelers.jsonl", [Labeler("l1"), Labeler("l2")])
    res = subprocess.run([sys.executable, "-m", "instructrl.cli", "data", "prepare", "--out",
                          str(run), "--heldout-labelers", "l2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "after the per-user cap: 100" in res.stdout
    out = read_records(run / "data" / "prompts.jsonl", Prompt.from_dict)
    assert {p.split for p in out} == {"train", "valid", "test"}
    labs = read_records(run / "data" / "labelers.jsonl", Labeler.from_dict)
    assert [(lab.id, lab.heldout) for lab in labs] == [("l1", False), ("l2", True)]


def test_cli_bad_input_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    good = json.dumps(_p(0, "u", "x").to_dict())
    (run / "data" / "raw_prompts.jsonl").write_text(good + "\n" + good.replace('"u"', '5') + "\n")
    res = subprocess.run([sys.executable, "-m", "instructrl.cli", "data", "prepare", "--out",
                          str(run)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "raw_prompts.jsonl:2: field 'user_id'" in res.stderr
    assert sorted(p.name for p in (run / "data").iterdir()) == ["raw_prompts.jsonl"]


def test_heldout_categories_and_styles_go_to_ood_and_move_nothing_else():
    ps = [Prompt(id=f"p{i}", user_id=f"u{i % 30}", text=f"q{i}",
                 category=("rewrite", "open_qa", "chat")[i % 3],
                 style=("plain", "few-shot")[i % 2]) for i in range(300)]
    plain, _ = prepare(ps, DataConfig(max_per_user=50))
    held, report = prepare(ps, DataConfig(max_per_user=50, heldout_categories=("rewrite",),
                                          heldout_styles=("few-shot",)))
    before = {p.id: p.split for p in plain}
    for p in held:
        if p.category == "rewrite" or p.style == "few-shot":
            assert p.split == "ood", p
        else:  # every other prompt keeps its user's split
            assert p.split == before[p.id] != "ood"
    assert report.per_split["ood"] == sum(p.category == "rewrite" or p.style == "few-shot"
                                          for p in ps) == 200
    assert report.lines()[1].split() == ["category", "train", "valid", "test", "ood"]
    assert "ood" not in "".join(prepare(ps, DataConfig())[1].lines())
