import json

import pytest

from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Demonstration, Prompt, Ranking
from instructrl.errors import InputError

GOOD_RANKING = {"prompt_id": "p1", "labeler_id": "l1",
                "responses": [{"text": "a", "policy": "sft"}, {"text": "b", "policy": "sft"},
                              {"text": "c", "policy": "ppo"}],
                "ranking": [[2], [0, 1]], "likert": [3, 3, 6], "flags": [["hallucination"], [], []]}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_round_trip(tmp_path):
    p = Prompt(id="p1", user_id="u1", text="what does the zorp eat?", category="open_qa",
               split="train", meta={"entity": "zorp"})
    r = Ranking.from_dict(GOOD_RANKING)
    write_records(tmp_path / "p.jsonl", [p])
    write_records(tmp_path / "r.jsonl", [r])
    assert read_records(tmp_path / "p.jsonl", Prompt.from_dict) == [p]
    assert read_records(tmp_path / "r.jsonl", Ranking.from_dict) == [r]


def test_ranking_pairs_drop_ties():
    r = Ranking.from_dict(GOOD_RANKING)
    assert sorted(r.pairs()) == [(2, 0), (2, 1)]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(ranking=[[0], [1]]), "ranking"),  # not a permutation (2 missing)
    (lambda d: d.update(ranking=[[0, 0], [1, 2]]), "ranking"),  # repeated index
    (lambda d: d.update(likert=[3, 9, 1]), "likert"),  # out of range
    (lambda d: d.update(likert=[3, 4]), "likert"),  # wrong length
    (lambda d: d.update(flags=[["nope"], [], []]), "flags"),
    (lambda d: d["responses"][1].pop("policy"), "responses[1].policy"),
    (lambda d: d.update(prompt_id=""), "prompt_id"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.update(responses=[{"text": "a", "policy": "x"}]), "responses"),
])
def test_bad_ranking_names_file_line_field(tmp_path, mutate, field):
    bad = json.loads(json.dumps(GOOD_RANKING))
    mutate(bad)
    path = tmp_path / "rankings.jsonl"
    _write_lines(path, [json.dumps(GOOD_RANKING), json.dumps(bad)])
    with pytest.raises(InputError) as e:
        read_records(path, Ranking.from_dict)
    assert e.value.line == 2 and e.value.field == field
    assert str(e.value).startswith(f"{path}:2: field '{field}'")


def test_bad_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    _write_lines(path, ['{"prompt_id": "p", "labeler_id": "l", "response": "x"}', "", "{oops"])
    with pytest.raises(InputError, match=r"d.jsonl:3: not valid JSON"):
        read_records(path, Demonstration.from_dict)


def test_wrong_types(tmp_path):
    path = tmp_path / "p.jsonl"
    _write_lines(path, [json.dumps({"id": "p", "user_id": 7, "text": "hi"})])
    with pytest.raises(InputError, match="field 'user_id': expected str, got int"):
        read_records(path, Prompt.from_dict)
    _write_lines(path, [json.dumps({"id": "p", "user_id": "u", "text": "hi", "split": "dev"})])
    with pytest.raises(InputError, match="field 'split'"):
        read_records(path, Prompt.from_dict)


def test_skipped_ranking_needs_no_order():
    d = dict(GOOD_RANKING, skipped="unclear intent")
    d.pop("ranking")
    assert Ranking.from_dict(d).skipped == "unclear intent"
    with pytest.raises(InputError, match="field 'ranking'"):
        Ranking.from_dict(dict(GOOD_RANKING, skipped="unclear intent"))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "p.jsonl"
    write_records(path, [{"a": 1}])

    class Boom:
        def to_dict(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records(path, [{"a": 2}, Boom()])
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temp file left behind


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "what is a zorp?"}]


def test_prompt_messages_round_trip_and_chat():
    p = Prompt(id="p1", user_id="u1", text="System: Be brief.\n\n...", messages=CHAT)
    d = p.to_dict()
    assert d["messages"] == CHAT and Prompt.from_dict(d) == p
    assert p.chat == CHAT
    single = Prompt(id="p2", user_id="u1", text="what is a zorp?")
    assert "messages" not in single.to_dict()  # single-turn lines stay as they were
    assert single.chat == "what is a zorp?"
    assert Prompt.from_dict(single.to_dict()) == single


@pytest.mark.parametrize("mutate, field, message", [
    (lambda m: m[1].update(role="bot"), "messages[1].role", "expected one of"),
    (lambda m: m[2].update(role="system"), "messages[2].role", "only come first"),
    (lambda m: m.pop(), "messages[2].role", "last turn must be the user's"),
    (lambda m: m[3].update(content="  "), "messages[3].content", "must not be empty"),
    (lambda m: m[1].update(content=3), "messages[1].content", "expected str"),
    (lambda m: m[0].update(name="x"), "messages[0].name", "unknown field"),
    (lambda m: m.__setitem__(1, "hi"), "messages[1]", "expected an object"),
    (lambda m: m.clear(), "messages", "at least one user turn"),
])
def test_bad_messages_name_the_turn(tmp_path, mutate, field, message):
    chat = json.loads(json.dumps(CHAT))
    mutate(chat)
    path = tmp_path / "p.jsonl"
    _write_lines(path, [json.dumps({"id": "p", "user_id": "u", "text": "t", "messages": chat})])
    with pytest.raises(InputError) as e:
        read_records(path, Prompt.from_dict)
    assert (e.value.line, e.value.field) == (1, field)
    assert message in str(e.value)
