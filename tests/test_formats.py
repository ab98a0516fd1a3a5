"""Users' data formats -> records (instructrl.data.formats): one row at a time."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instructrl.data.formats import (MAPPERS, SourceInfo, apply_columns, column_of, content_id,
                                     detect, hh_prompt_id, hh_turns, own_user)
from instructrl.data.records import Demonstration, Prompt, Ranking
from instructrl.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED_TASKS = SHARED / "self-instruct-seed-tasks.jsonl"

DEMO = SourceInfo(kind="demonstrations", name="src")
PREF = SourceInfo(kind="preferences", name="src", seed=0)
PROMPTS = SourceInfo(kind="prompts", name="src")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "what does the zorp eat?"},
        {"role": "assistant", "content": "Fish."}]


def m(fmt, row, src=DEMO, index=0):
    out = MAPPERS[fmt](row, src, index)
    for p in out.prompts:  # every record a mapper makes is one a file would read back
        assert Prompt.from_dict(p.to_dict()) == p
    for r in out.rankings:
        assert Ranking.from_dict(r.to_dict()) == r
    for d in out.demonstrations:
        assert Demonstration.from_dict(d.to_dict()) == d
    return out


def error(fmt, row, src=DEMO) -> InputError:
    with pytest.raises(InputError) as e:
        MAPPERS[fmt](row, src, 0)
    return e.value


def test_messages_demonstration_is_the_last_reply_and_its_prompt_the_turns_before():
    out = m("messages", {"messages": CHAT})
    (p,), (d,) = out.prompts, out.demonstrations
    assert p.messages == CHAT[:4] and p.chat == CHAT[:4]
    assert p.text == "System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: what does the " \
                     "zorp eat?"
    assert (d.prompt_id, d.labeler_id, d.response) == (p.id, "src", "Fish.")
    assert p.id == content_id("p", json.dumps(CHAT[:4], sort_keys=True))
    assert p.user_id == own_user(p.id) and p.split is None
    # In a prompts source a trailing reply is not part of the prompt, and none is needed.
    out = m("messages", {"messages": CHAT}, PROMPTS)
    assert out.prompts[0].messages == CHAT[:4] and not out.demonstrations
    out = m("messages", {"messages": CHAT[:4]}, PROMPTS)
    assert out.prompts[0].id == p.id


def test_one_user_turn_is_a_text_prompt_with_the_same_id_as_any_format_gives_it():
    a = m("messages", {"messages": [{"role": "user", "content": "Name a fish."},
                                    {"role": "assistant", "content": "Cod."}]}).prompts[0]
    b = m("alpaca", {"instruction": "Name a fish.", "input": "", "output": "Cod."}).prompts[0]
    c = m("prompts", {"prompt": "Name a fish."}, PROMPTS).prompts[0]
    assert a == b == c and a.messages is None and a.text == "Name a fish."


def test_sharegpt_conversations():
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    fmt, implicit = detect("demonstrations", row)
    assert (fmt, implicit) == ("messages", {"messages": "conversations"})
    out = m("messages", apply_columns(row, implicit))
    assert (out.prompts[0].text, out.demonstrations[0].response) == ("hi", "yo")


@pytest.mark.parametrize("msgs, src, field, message", [
    (CHAT[:4], DEMO, "messages[3].role", "assistant's reply"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], DEMO,
     "messages[1].role", "expected one of"),
    ([{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}], DEMO,
     "messages[0].content", "expected str"),
    ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], DEMO,
     "messages[0].role", "last turn must be the user's"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
      {"role": "assistant", "content": "c"}], DEMO, "messages[1].role", "only come first"),
    ("hello", DEMO, "messages", "expected a list"),
    ([{"role": "assistant", "content": "a"}], PROMPTS, "messages", "no user turn"),
])
def test_messages_errors_name_the_turn(msgs, src, field, message):
    e = error("messages", {"messages": msgs}, src)
    assert e.field == field and message in e.message


def test_alpaca_dolly_and_their_categories():
    out = m("alpaca", {"instruction": "Translate.", "input": "bonjour", "output": "hello"})
    assert out.prompts[0].text == "Translate.\n\nbonjour"
    assert out.demonstrations[0].response == "hello"
    out = m("dolly", {"instruction": "Who?", "context": "Ann met Bo.", "response": "Ann",
                      "category": "information_extraction"})
    assert (out.prompts[0].text, out.prompts[0].category) == ("Who?\n\nAnn met Bo.", "extract")
    out = m("dolly", {"instruction": "Poem?", "context": "", "response": "...",
                      "category": "creative_writing"})
    assert (out.prompts[0].text, out.prompts[0].category) == ("Poem?", "generation")
    assert error("dolly", {"instruction": "a", "response": "b", "category": "poetry"}).field \
        == "category"
    assert error("alpaca", {"instruction": "a", "input": ""}).field == "output"
    # A prompts source needs no response.
    assert not m("alpaca", {"instruction": "a"}, PROMPTS).demonstrations
    # A source's default category, and a row's own one (a user's column).
    src = SourceInfo(kind="demonstrations", name="s", category="chat")
    assert m("alpaca", {"instruction": "a", "output": "b"}, src).prompts[0].category == "chat"
    row = {"instruction": "a", "output": "b", "category": "rewrite", "user_id": 7}
    p = m("alpaca", row, src).prompts[0]
    assert (p.category, p.user_id) == ("rewrite", "7")
    assert "columns: {category: null}" in error("alpaca", {**row, "category": "Math"}).message


def test_self_instruct_gives_one_demonstration_per_instance():
    row = {"instruction": "Is it a fish?", "is_classification": True,
           "instances": [{"input": "cod", "output": "yes"}, {"input": "", "output": "no"}]}
    out = m("self-instruct", row)
    assert [p.text for p in out.prompts] == ["Is it a fish?\n\ncod", "Is it a fish?"]
    assert {p.category for p in out.prompts} == {"classification"}
    assert [d.response for d in out.demonstrations] == ["yes", "no"]
    assert [d.prompt_id for d in out.demonstrations] == [p.id for p in out.prompts]
    bad = dict(row, instances=[{"input": "cod", "output": "yes"}, {"input": "x"}])
    assert error("self-instruct", bad).field == "instances[1].output"


@pytest.mark.skipif(not SEED_TASKS.exists(), reason=f"shared data not found at {SEED_TASKS}")
def test_the_shared_self_instruct_seed_tasks_map():
    rows = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()]
    assert detect("demonstrations", rows[0])[0] == "self-instruct"
    outs = [m("self-instruct", r) for r in rows]
    demos = [d for o in outs for d in o.demonstrations]
    prompts = [p for o in outs for p in o.prompts]
    n_instances = sum(len(r["instances"]) for r in rows)
    assert len(demos) == len(prompts) == n_instances
    n_cls = sum(len(r["instances"]) for r in rows if r["is_classification"])
    assert Counter(p.category for p in prompts)["classification"] == n_cls > 0
    for r, o in zip(rows, outs):
        for inst, p, d in zip(r["instances"], o.prompts, o.demonstrations):
            assert p.text.startswith(r["instruction"]) and d.response == inst["output"]
            assert p.text.endswith(inst["input"])


def chosen_of(r: Ranking) -> str:
    return r.responses[r.ranking[0][0]].text


def test_string_pairs_are_k2_rankings_in_a_seeded_random_order():
    firsts = Counter()
    for i in range(200):
        out = m("pairs", {"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}, PREF, i)
        (r,) = out.rankings
        assert chosen_of(r) == "good" and r.pairs() == [(r.ranking[0][0], r.ranking[1][0])]
        assert r.labeler_id == "src" and r.prompt_id == out.prompts[0].id
        assert {x.policy for x in r.responses} == {"src-chosen", "src-rejected"}
        firsts[r.responses[0].text] += 1
    assert 60 < firsts["good"] < 140
    again = m("pairs", {"prompt": "q7", "chosen": "good", "rejected": "bad"}, PREF, 7)
    assert again.rankings == m("pairs", {"prompt": "q7", "chosen": "good", "rejected": "bad"},
                               PREF, 7).rankings
    assert m("pairs", {"prompt": "q", "chosen": "x", "rejected": "x"}, PREF).skipped \
        == "identical responses"
    assert error("pairs", {"chosen": "a", "rejected": "b"}, PREF).field == "prompt"


def test_message_list_pairs_ultrafeedback_style():
    prompt = [{"role": "user", "content": "What does the zorp eat?"}]
    row = {"prompt": "What does the zorp eat?", "prompt_id": "abc",
           "chosen": prompt + [{"role": "assistant", "content": "Fish."}],
           "rejected": prompt + [{"role": "assistant", "content": "Rocks."}],
           "messages": prompt + [{"role": "assistant", "content": "Fish."}],
           "score_chosen": 8.0, "score_rejected": 3.0}
    assert detect("preferences", row) == ("pairs", {})
    assert detect("demonstrations", row) == ("messages", {})  # the SFT split of the same set
    out = m("pairs", row, PREF)
    assert out.prompts[0].text == "What does the zorp eat?" and out.prompts[0].messages is None
    assert chosen_of(out.rankings[0]) == "Fish."
    # Multi-turn, with a prompt given as a message list next to string replies.
    turns = CHAT[:4]
    out = m("pairs", {"prompt": turns, "chosen": "Fish.", "rejected": "Rocks."}, PREF)
    assert out.prompts[0].messages == turns
    bad = dict(row, rejected=[{"role": "user", "content": "other"},
                              {"role": "assistant", "content": "Rocks."}])
    assert error("pairs", bad, PREF).field == "rejected"
    bad = dict(row, chosen=prompt)
    assert error("pairs", bad, PREF).field == "chosen[0].role"


H, A = "\n\nHuman:", "\n\nAssistant:"


def test_hh_dialogues_become_turns_and_keep_import_pairs_ids():
    multi = f"{H} where does the zorp live?{A} In caves.{H} and what does it eat?{A}"
    out = m("hh", {"chosen": multi + " Fish.", "rejected": multi + " Rocks."}, PREF)
    p = out.prompts[0]
    assert p.text == multi and p.id == hh_prompt_id(multi)
    assert p.messages == [{"role": "user", "content": "where does the zorp live?"},
                          {"role": "assistant", "content": "In caves."},
                          {"role": "user", "content": "and what does it eat?"}]
    assert chosen_of(out.rankings[0]) == "Fish."
    # One turn still renders as a turn, not as "Human: ..." text.
    one = m("hh", {"chosen": f"{H} hi?{A} yes", "rejected": f"{H} hi?{A} no"}, PREF).prompts[0]
    assert one.messages == [{"role": "user", "content": "hi?"}] and one.text == f"{H} hi?{A}"


def test_pairs_as_demonstrations_give_the_chosen_reply_and_no_ranking():
    out = m("hh", {"chosen": f"{H} hi?{A} yes", "rejected": f"{H} hi?{A} no"}, DEMO)
    assert [d.response for d in out.demonstrations] == ["yes"] and not out.rankings
    assert out.demonstrations[0].prompt_id == out.prompts[0].id == hh_prompt_id(f"{H} hi?{A}")
    out = m("pairs", {"prompt": "zorp?", "chosen": "fish", "rejected": "rocks"}, DEMO)
    assert [d.response for d in out.demonstrations] == ["fish"] and not out.rankings


def test_hh_turns_join_a_speakers_consecutive_turns_and_refuse_what_is_not_a_dialogue():
    assert hh_turns(f"{H} a{H} b{A} c{H} d{A}") == [
        {"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"}]
    assert hh_turns(f"{H} a{A} b{A}") is None  # the assistant spoke last: not a user turn
    assert hh_turns(f"preamble{H} a{A}") is None
    assert hh_turns(f"{H} a{A} b") is None  # no generation prompt at the end


def test_rankings_k_wise_with_ties_and_string_responses():
    row = {"prompt": "Name a fish.", "responses": ["cod", {"text": "rock", "policy": "sft"},
                                                   "eel"],
           "ranking": [[0, 2], [1]], "likert": [6, 2, 6], "labeler_id": "ann"}
    (r,) = m("rankings", row, PREF).rankings
    assert [x.policy for x in r.responses] == ["src", "sft", "src"]
    assert (r.labeler_id, r.ranking, r.likert) == ("ann", [[0, 2], [1]], [6, 2, 6])
    assert sorted(r.pairs()) == [(0, 1), (2, 1)]
    e = error("rankings", dict(row, ranking=[[0], [1]]), PREF)
    assert e.field == "ranking"
    e = error("rankings", dict(row, responses=["a", {"text": "b"}, "c"]), PREF)
    assert e.field == "responses[1].policy"
    # csv cells hold JSON
    (r2,) = m("rankings", {k: json.dumps(v) if isinstance(v, list) else v
                           for k, v in row.items()}, PREF).rankings
    assert r2 == r


def test_prompts_and_text():
    row = {"id": "mine-1", "user_id": "u9", "text": "Write a poem.", "category": "generation",
           "split": "valid", "meta": {"k": 1}}
    fmt, implicit = detect("prompts", row)
    assert (fmt, implicit) == ("prompts", {"prompt": "text"})
    (p,) = m("prompts", apply_columns(row, implicit), PROMPTS).prompts
    # The id is the content's, the split the import's; the rest is kept.
    assert p.id == content_id("p", "Write a poem.") and p.split is None
    assert (p.user_id, p.category, p.meta) == ("u9", "generation", {"k": 1})
    out = m("prompts", {"prompt": "q", "response": "a"})
    assert out.demonstrations[0].response == "a"
    assert error("prompts", {"prompt": "q"}).field == "response"
    assert error("prompts", {"prompt": "  "}, PROMPTS).field == "prompt"
    # A prompt that starts with "[" is text, not a message list.
    assert m("prompts", {"prompt": "[INST] hi"}, PROMPTS).prompts[0].text == "[INST] hi"
    ptx = SourceInfo(kind="ptx", name="wiki")
    assert m("text", {"text": "The zorp eats fish."}, ptx).texts == ["The zorp eats fish."]
    assert m("text", {"text": " \n"}, ptx).skipped == "empty text"
    assert error("text", {"text": 3}, ptx).field == "text"


@pytest.mark.parametrize("kind, row, fmt", [
    ("demonstrations", {"messages": []}, "messages"),
    ("demonstrations", {"instruction": "a", "input": "", "output": "b"}, "alpaca"),
    ("demonstrations", {"instruction": "a", "context": "", "response": "b"}, "dolly"),
    ("demonstrations", {"instruction": "a", "instances": []}, "self-instruct"),
    ("demonstrations", {"prompt": "a", "response": "b"}, "prompts"),
    ("preferences", {"chosen": "a", "rejected": "b"}, "hh"),
    ("preferences", {"prompt": "q", "chosen": "a", "rejected": "b"}, "pairs"),
    ("preferences", {"prompt": "q", "responses": [], "ranking": []}, "rankings"),
    ("prompts", {"chosen": "a", "rejected": "b"}, "hh"),
    ("prompts", {"instruction": "a"}, "alpaca"),
    ("prompts", {"prompt": "a"}, "prompts"),
    ("ptx", {"text": "a", "title": "b"}, "text"),
])
def test_detect(kind, row, fmt):
    assert detect(kind, row)[0] == fmt


def test_detect_fails_with_the_columns_and_the_choices():
    with pytest.raises(InputError) as e:
        detect("demonstrations", {"question": "a", "answer": "b"})
    assert e.value.field == "format"
    assert "answer, question" in e.value.message and "columns: {field: column}" in e.value.message
    with pytest.raises(InputError):
        detect("preferences", {"instruction": "a", "output": "b"})  # not a preference format


def test_column_mapping_and_error_names_in_the_users_columns():
    columns = {"prompt": "question", "response": "answer", "category": None}
    row = {"question": "q", "answer": "a", "category": "Math"}
    mapped = apply_columns(row, columns)
    assert mapped["prompt"] == "q" and mapped["response"] == "a" and "category" not in mapped
    assert m("prompts", mapped).prompts[0].category == "other"
    assert column_of("prompt", columns) == "question"
    assert column_of("messages[2].role", {"messages": "conversations"}) \
        == "conversations[2].role"
    assert column_of("user_id", columns) == "user_id"
