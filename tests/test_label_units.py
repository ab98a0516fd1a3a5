"""Labeling app, pure parts: form parsing, agreement, the samples format."""

from __future__ import annotations

import json
import re

import pytest

from instructrl.errors import InputError
from instructrl.label import forms
from instructrl.label.agreement import agreement, pair_agreement
from instructrl.label.samples import SampleSet, parse_rows, text_rows
from instructrl.label.store import display_order


def rank_form(k=4, ranking="[[0],[1,2],[3]]", **extra):
    f = {f"likert_{i}": [str(7 - i)] for i in range(k)}  # agrees with the default ranking
    f["ranking"] = [ranking]
    f.update({key: v if isinstance(v, list) else [v] for key, v in extra.items()})
    return f


def test_parse_ranking_fields():
    out = forms.parse_ranking(rank_form(flags_2=["sexual", "hallucination", "sexual"],
                                        critique="too long\r\nand wrong", csrf_token="x"), 4)
    assert out["ranking"] == [[0], [1, 2], [3]]
    assert out["likert"] == [7, 6, 5, 4]
    # canonical FLAGS order, repeats dropped; CRLF from browsers normalised
    assert out["flags"] == [[], [], ["hallucination", "sexual"], []]
    assert out["critique"] == "too long\nand wrong"
    assert forms.parse_ranking(rank_form(critique="   "), 4)["critique"] is None


@pytest.mark.parametrize("ranking,msg", [
    ("[[0],[1],[2]]", "missing [3]"),
    ("[[0],[1,2],[3],[1]]", "repeated [1]"),
    ("[[0],[1,2],[7]]", "unknown response 7"),
    ("[[0],[],[1,2,3]]", "non-empty"),
    ("[[0],[1,2],[true]]", "response indices"),
    ("0,1,2,3", "not JSON"),
    ("[]", "non-empty"),
    ("", "rank the responses"),  # the page sends it empty until the labeler ranks
    ("[" * 100_000, "longer than 1000"),  # was a RecursionError: HTTP 500
    ("[" * 499 + "]" * 499, "lists of response indices"),
])
def test_parse_ranking_rejects_non_permutations(ranking, msg):
    with pytest.raises(InputError, match=re.escape(msg)) as e:
        forms.parse_ranking(rank_form(ranking=ranking), 4)
    assert e.value.field == "ranking"


@pytest.mark.parametrize("change,field", [
    ({"likert_0": "0"}, "likert_0"), ({"likert_1": "8"}, "likert_1"),
    ({"likert_2": "3.5"}, "likert_2"), ({"likert_3": ""}, "likert_3"),
    ({"likert_0": ["3", "4"]}, "likert_0"), ({"likert_9": "3"}, "likert_9"),
    ({"flags_4": "sexual"}, "flags_4"), ({"flags_x": "sexual"}, "flags_x"),
    ({"flags_0": "rude"}, "flags_0"), ({"comment": "hi"}, "comment"),
])
def test_parse_ranking_rejects_bad_fields(change, field):
    with pytest.raises(InputError) as e:
        forms.parse_ranking(rank_form(**change), 4)
    assert e.value.field == field


def test_parse_ranking_requires_every_likert():
    f = rank_form()
    del f["likert_2"]
    with pytest.raises(InputError, match="missing") as e:
        forms.parse_ranking(f, 4)
    assert e.value.field == "likert_2"


def test_parse_edit_demo_skip():
    assert forms.parse_edit({"base": ["1"], "text": ["better"]}, ["a", "b"]) == (1, "better")
    with pytest.raises(InputError, match="identical"):
        forms.parse_edit({"base": ["1"], "text": [" b "]}, ["a", "b"])
    with pytest.raises(InputError, match="unknown response"):
        forms.parse_edit({"base": ["2"], "text": ["x"]}, ["a", "b"])
    with pytest.raises(InputError, match="unknown response"):
        forms.parse_edit({"base": ["²"], "text": ["x"]}, ["a", "b"])
    assert forms.parse_demonstration({"response": ["hello"]}) == "hello"
    with pytest.raises(InputError, match="empty"):
        forms.parse_demonstration({"response": ["  \n"]})
    with pytest.raises(InputError, match="longer"):
        forms.parse_demonstration({"response": ["x" * (forms.MAX_TEXT + 1)]})
    assert forms.parse_skip({"reason": [" unclear "]}) == "unclear"
    with pytest.raises(InputError, match="missing"):
        forms.parse_skip({})


def test_pair_agreement_by_hand():
    # a: 0 > 1 > 2 > 3; b: 1 > 0 > 2 = 3. Pairs: (0,1) disagree, (0,2) agree, (0,3) agree,
    # (1,2) agree, (1,3) agree, (2,3) tied in b -> left out.
    assert pair_agreement([[0], [1], [2], [3]], [[1], [0], [2, 3]]) == (4, 5)
    assert pair_agreement([[0, 1]], [[1], [0]]) == (0, 0)


def test_agreement_overall_and_per_labeler():
    rows = [("s1", "ann", [[0], [1], [2]]), ("s1", "bob", [[0], [2], [1]]),
            ("s2", "ann", [[1], [0]]), ("s2", "cat", [[1], [0]]),
            ("s3", "bob", [[0], [1]])]  # s3 has one labeler: no overlap
    a = agreement(rows)
    # s1: (0,1) agree, (0,2) agree, (1,2) disagree -> 2/3; s2: 1/1. Total 3/4.
    assert a["rate"] == pytest.approx(0.75) and a["pairs"] == 4 and a["items"] == 2
    assert a["per_labeler"]["ann"] == {"rate": pytest.approx(0.75), "pairs": 4}
    assert a["per_labeler"]["bob"] == {"rate": pytest.approx(2 / 3), "pairs": 3}
    assert agreement([("s3", "bob", [[0], [1]])])["rate"] is None


def test_samples_format_strict():
    good = {"prompt_id": "p1", "responses": [{"text": "a", "policy": "sft"},
                                             {"text": "b", "policy": "ppo"}]}
    ss = SampleSet.from_dict(good)
    assert ss.to_dict() == good and len(ss.key()) == 64
    assert SampleSet.from_dict(json.loads(json.dumps(good))).key() == ss.key()
    # a policy may answer with nothing at all: that is a response to rank, not an error
    empty = {**good, "responses": [{"text": "", "policy": "sft"}, good["responses"][1]]}
    assert SampleSet.from_dict(empty).responses[0].text == ""
    bad = [({**good, "extra": 1}, "extra"), ({"responses": good["responses"]}, "prompt_id"),
           ({**good, "responses": good["responses"][:1]}, "responses"),
           ({**good, "responses": [{"text": "a"}, {"text": "b", "policy": "x"}]},
            "responses[0].policy"),
           ({**good, "responses": [{"text": 3, "policy": "x"}, {"text": "b", "policy": "x"}]},
            "responses[0].text"),
           ({**good, "responses": [{"text": "a", "policy": "x", "logp": 1}] * 2},
            "responses[0].logp")]
    for d, field in bad:
        with pytest.raises(InputError) as e:
            SampleSet.from_dict(d)
        assert e.value.field == field, d
    text = json.dumps(good) + "\n\n" + json.dumps({**good, "prompt_id": ""}) + "\n"
    with pytest.raises(InputError, match=r"up\.jsonl:3: field 'prompt_id'"):
        parse_rows(text_rows(text, "up.jsonl"), "up.jsonl", SampleSet.from_dict)
    with pytest.raises(InputError, match=r"up\.jsonl:1: not valid JSON"):
        text_rows("{nope", "up.jsonl")


def test_display_order_is_a_stable_permutation():
    orders = {tuple(display_order(t, 4)) for t in range(50)}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len(orders) > 5  # shuffled per task, not one fixed order
    assert display_order(7, 4) == display_order(7, 4)


def test_ranking_that_contradicts_likert_needs_confirmation():
    # Likert says 0 is best (7) and 1 worst (1); the ranking says 2 > 0 > 1: 2 above 0 is a
    # contradiction (issue: stored ranking [[2],[0],[1]] with Likert [4,7,1]).
    form = {"likert_0": ["7"], "likert_1": ["1"], "likert_2": ["4"], "ranking": ["[[2],[0],[1]]"]}
    assert forms.contradictions([[2], [0], [1]], [7, 1, 4]) == [(2, 0)]
    with pytest.raises(InputError, match="response C is ranked above response A but scored "
                                         "4 < 7") as e:
        forms.parse_ranking(form, 3, ["A", "B", "C"])
    assert e.value.field == "ranking"
    out = forms.parse_ranking({**form, "contradiction_ok": ["1"]}, 3)
    assert out["ranking"] == [[2], [0], [1]]
    with pytest.raises(InputError) as e:
        forms.parse_ranking({**form, "contradiction_ok": ["yes"]}, 3)
    assert e.value.field == "contradiction_ok"
    # ties and equal scores are no contradiction
    assert forms.contradictions([[0, 1], [2]], [3, 5, 2]) == []
    assert forms.contradictions([[1], [0]], [4, 4]) == []
    ok = {"likert_0": ["7"], "likert_1": ["1"], "likert_2": ["4"], "ranking": ["[[0],[2],[1]]"]}
    assert forms.parse_ranking(ok, 3)["ranking"] == [[0], [2], [1]]


def test_import_lines_that_a_database_cannot_hold_are_input_errors(tmp_path):
    # Before: a deeply nested line was a RecursionError (HTTP 500, a CLI traceback), and NUL
    # characters or lone surrogates reached the database driver (500 on PostgreSQL).
    from instructrl.label.samples import file_rows
    cases = [
        ('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", r"f\.jsonl:2: not valid JSON"),
        ('{"id": "x\\u0000y"}', r"f\.jsonl:2: field 'id': contains a NUL"),
        ('{"x\\u0000": 1}', r"f\.jsonl:2: field 'x\x00': contains a NUL"),
        ('{"meta": {"k": ["ok", "a\\udc00"]}}', r"f\.jsonl:2: field 'meta\.k\[1\]': .*surrogate"),
        ('{"meta": ' + "[" * 101 + "]" * 101 + "}", r"f\.jsonl:2: field 'meta.*nested deeper"),
    ]
    for line, msg in cases:
        path = tmp_path / "f.jsonl"
        path.write_text('{"ok": 1}\n' + line + "\n")
        with pytest.raises(InputError, match=msg):
            file_rows(path)
        with pytest.raises(InputError, match=msg):
            text_rows(path.read_text(), str(path).replace(str(tmp_path) + "/", ""))
    (tmp_path / "f.jsonl").write_bytes(b'{"ok": 1}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"f\.jsonl: not UTF-8 text"):
        file_rows(tmp_path / "f.jsonl")
    # a line ends at "\n" only; U+2028 and friends are characters inside a string
    (tmp_path / "f.jsonl").write_text('{"text": "a\u2028b\x85c\u2029d"}\r\n\n', encoding="utf-8")
    assert file_rows(tmp_path / "f.jsonl") == [(1, {"text": "a\u2028b\x85c\u2029d"})]
