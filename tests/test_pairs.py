"""Pairwise data (HH-RLHF chosen/rejected dialogues) as K = 2 rankings (instructrl.data.pairs)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from instructrl.cli import main
from instructrl.data.jsonl import read_records
from instructrl.data.pairs import build, import_pairs, prompt_id, split_pair
from instructrl.data.records import Demonstration, Prompt, Ranking
from instructrl.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"

H, A = "\n\nHuman:", "\n\nAssistant:"
MULTI = f"{H} where does the zorp live?{A} In caves.{H} and what does it eat?{A}"
ROWS = [
    # multi-turn, chosen and rejected share everything but the last assistant turn
    {"chosen": MULTI + " The zorp eats fish.", "rejected": MULTI + " I do not know."},
    # single turn; the rejected reply itself contains a fake Human/Assistant exchange, which
    # must not move the cut
    {"chosen": f"{H} is a blip red?{A} No, a blip is blue.",
     "rejected": f"{H} is a blip red?{A} Yes.{H} really?{A} Yes."},
    # the same prompt again, a different comparison: kept as a second ranking of one prompt
    {"chosen": MULTI + " Fish.", "rejected": MULTI + " Rocks, mostly."},
]


def write_jsonl(path: Path, rows, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def chosen_of(r: Ranking) -> str:
    return r.responses[r.ranking[0][0]].text


def test_split_pair_cuts_at_the_last_shared_assistant_turn():
    p = split_pair(ROWS[0]["chosen"], ROWS[0]["rejected"])
    assert p.prompt == MULTI  # earlier turns kept verbatim, up to and including "Assistant:"
    assert (p.chosen, p.rejected) == ("The zorp eats fish.", "I do not know.")
    p = split_pair(ROWS[1]["chosen"], ROWS[1]["rejected"])
    assert p.prompt == f"{H} is a blip red?{A}"
    assert p.rejected == f"Yes.{H} really?{A} Yes."
    # Both replies start alike ("No, ..."): the common prefix runs into the reply, the cut not.
    p = split_pair(f"{H} q?{A} No, it is blue.", f"{H} q?{A} No, it is red.")
    assert (p.prompt, p.chosen, p.rejected) == (f"{H} q?{A}", "No, it is blue.", "No, it is red.")


def test_build_makes_k2_rankings_with_the_chosen_response_first():
    imp = build(enumerate(ROWS, 1), source="x.jsonl", valid_fraction=0.0, seed=0)
    assert imp.rows == 3 and imp.identical == 0
    assert [p.text for p in imp.prompts] == [MULTI, f"{H} is a blip red?{A}"]
    # What a model is prompted with: the dialogue's turns, not one message holding "Human:".
    assert [p.chat for p in imp.prompts] == [
        [{"role": "user", "content": "where does the zorp live?"},
         {"role": "assistant", "content": "In caves."},
         {"role": "user", "content": "and what does it eat?"}],
        [{"role": "user", "content": "is a blip red?"}]]
    for p in imp.prompts:
        assert p.id == prompt_id(p.text) and p.user_id == f"user-{p.id}"
        assert p.split == "train" and p.category == "other"
        assert Prompt.from_dict(p.to_dict()) == p
    assert len(imp.rankings) == 3
    assert [r.prompt_id for r in imp.rankings] == [imp.prompts[0].id, imp.prompts[1].id,
                                                   imp.prompts[0].id]
    assert [chosen_of(r) for r in imp.rankings] == ["The zorp eats fish.", "No, a blip is blue.",
                                                   "Fish."]
    for r in imp.rankings:
        assert Ranking.from_dict(r.to_dict()) == r
        assert r.labeler_id == "hh" and len(r.responses) == 2
        assert r.responses[r.ranking[0][0]].policy == "hh-chosen"
        assert r.responses[r.ranking[1][0]].policy == "hh-rejected"
        assert r.pairs() == [(r.ranking[0][0], r.ranking[1][0])]
    # One stand-in demonstration per train prompt: the chosen reply of its first pair.
    assert [(d.prompt_id, d.response) for d in imp.demonstrations] == [
        (imp.prompts[0].id, "The zorp eats fish."), (imp.prompts[1].id, "No, a blip is blue.")]


def test_response_order_is_shuffled_and_split_is_seeded_and_order_free():
    rows = [{"chosen": f"{H} question {i}?{A} good {i}", "rejected": f"{H} question {i}?{A} bad"}
            for i in range(200)]
    imp = build(enumerate(rows, 1), source="x", valid_fraction=0.25, seed=3)
    first = Counter(r.responses[0].policy for r in imp.rankings)
    assert 60 < first["hh-chosen"] < 140  # position says nothing about preference
    split = {p.id: p.split for p in imp.prompts}
    assert Counter(split.values()) == {"train": 150, "valid": 50}
    # No demonstration from a valid prompt; every train prompt has one.
    assert {d.prompt_id for d in imp.demonstrations} == {i for i, s in split.items()
                                                         if s == "train"}
    again = build(enumerate(reversed(rows), 1), source="x", valid_fraction=0.25, seed=3)
    assert {p.id: p.split for p in again.prompts} == split
    other = build(enumerate(rows, 1), source="x", valid_fraction=0.25, seed=4)
    assert {p.id: p.split for p in other.prompts} != split
    limited = build(enumerate(rows, 1), source="x", valid_fraction=0.25, seed=3, limit=10)
    assert limited.rows == 10 and len(limited.rankings) == 10


def test_identical_responses_are_skipped_and_counted():
    rows = ROWS + [{"chosen": f"{H} hi{A} hello", "rejected": f"{H} hi{A} hello"}]
    imp = build(enumerate(rows, 1), source="x", valid_fraction=0.0)
    assert imp.identical == 1 and len(imp.rankings) == 3
    assert prompt_id(f"{H} hi{A}") not in {p.id for p in imp.prompts}


@pytest.mark.parametrize("bad, line, field, message", [
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', 3, "rejected", "missing"),
    ('{"chosen": "x", "rejected": "y"', 3, None, "not valid JSON"),
    ('{"chosen": 7, "rejected": "y"}', 3, "chosen", "expected str"),
    ('["chosen", "rejected"]', 3, None, "JSON object"),
    ('{"chosen": "Human: hi Assistant: a", "rejected": "Human: hi Assistant: b"}', 3, "chosen",
     "share no"),
])
def test_bad_lines_name_file_line_field_and_write_nothing(tmp_path, bad, line, field, message):
    src = tmp_path / "pairs.jsonl"
    lines = [json.dumps(ROWS[0]), "", bad, json.dumps(ROWS[1])]  # blank line 2 still counts
    write_jsonl(src, lines)
    run = tmp_path / "run"
    with pytest.raises(InputError) as e:
        import_pairs(str(src), run)
    assert (e.value.path, e.value.line, e.value.field) == (str(src), line, field)
    assert str(e.value).startswith(f"{src}:{line}: ")
    assert message in str(e.value)
    assert not (run / "data").exists() or not any((run / "data").iterdir())

    # --force over an existing import: a bad source leaves the old files untouched.
    good = write_jsonl(tmp_path / "good.jsonl", ROWS)
    import_pairs(str(good), run)
    before = {f.name: f.read_bytes() for f in (run / "data").iterdir()}
    with pytest.raises(InputError):
        import_pairs(str(src), run, force=True)
    assert {f.name: f.read_bytes() for f in (run / "data").iterdir()} == before


def test_cli_refuses_to_overwrite_and_reports_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "pairs.jsonl.gz", ROWS, gz=True)
    run = tmp_path / "run"
    assert main(["data", "import-pairs", "--in", str(src), "--out", str(run),
                 "--valid-fraction", "0.5", "--category", "chat"]) == 0
    out = capsys.readouterr().out
    assert "rankings (K = 2): 3 on 2 distinct prompts" in out
    prompts = read_records(run / "data" / "prompts.jsonl", Prompt.from_dict)
    assert {p.category for p in prompts} == {"chat"}
    assert Counter(p.split for p in prompts) == {"train": 1, "valid": 1}
    assert len(read_records(run / "data" / "rankings.jsonl", Ranking.from_dict)) == 3
    assert len(read_records(run / "data" / "demonstrations.jsonl", Demonstration.from_dict)) == 1

    before = (run / "data" / "rankings.jsonl").read_bytes()
    assert main(["data", "import-pairs", "--in", str(src), "--out", str(run)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (run / "data" / "rankings.jsonl").read_bytes() == before
    assert main(["data", "import-pairs", "--in", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "r2")]) == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err
    assert main(["data", "import-pairs", "--in", str(src), "--out", str(tmp_path / "r3"),
                 "--category", "poetry"]) == 2
    assert "unknown category 'poetry'" in capsys.readouterr().err


def test_a_hub_id_goes_to_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, data_dir=None, split=None):
        calls.append((name, data_dir, split))
        return ROWS

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    imp = import_pairs("Anthropic/hh-rlhf", tmp_path / "run", split="test",
                       hub_data_dir="harmless-base", valid_fraction=0.0)
    assert calls == [("Anthropic/hh-rlhf", "harmless-base", "test")]
    assert len(imp.rankings) == 3
    assert (tmp_path / "run" / "data" / "rankings.jsonl").exists()


def test_an_unreachable_hub_id_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """Found by a user: offline, a hub id was a raw ConnectionError traceback."""
    import datasets

    def offline(name, **kwargs):
        raise ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub "
                              "(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["data", "import-pairs", "--in", "Anthropic/hh-rlhf", "--out",
                 str(tmp_path / "run"), "--hub-data-dir", "harmless-base"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'Anthropic/hh-rlhf' is not in the local cache" in err
    assert "hf download Anthropic/hh-rlhf --repo-type dataset" in err
    assert not (tmp_path / "run" / "data").exists()


needs_shared = pytest.mark.skipif(not HH_FILE.exists(),
                                  reason=f"shared data not found at {HH_FILE}")


@needs_shared
def test_the_shared_hh_rlhf_file_imports(tmp_path):
    imp = import_pairs(str(HH_FILE), tmp_path / "run")
    assert imp.rows == 2312 and len(imp.rankings) + imp.identical == 2312
    data = tmp_path / "run" / "data"
    prompts = {p.id: p for p in read_records(data / "prompts.jsonl", Prompt.from_dict)}
    rankings = read_records(data / "rankings.jsonl", Ranking.from_dict)
    assert len(rankings) == len(imp.rankings) and len(prompts) == len(imp.prompts)
    n_valid = sum(p.split == "valid" for p in prompts.values())
    assert n_valid == round(0.2 * len(prompts))
    # Every ranking rebuilds its source row: prompt + " " + reply, up to white space.
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for row, r in zip(rows, rankings):
        p = prompts[r.prompt_id]
        assert row["chosen"].startswith(p.text) and row["rejected"].startswith(p.text)
        assert row["chosen"][len(p.text):].strip() == chosen_of(r)
        assert row["rejected"][len(p.text):].strip() == r.responses[r.ranking[1][0]].text
        assert p.text.endswith("\n\nAssistant:")
    # Dialogues are turns ending with the human's; the few that are not stay one text.
    with_turns = [p for p in prompts.values() if p.messages]
    assert len(with_turns) > 0.99 * len(prompts)
    assert sum(len(p.messages) >= 3 for p in with_turns) > 0.5 * len(with_turns)
    for p in with_turns:
        assert p.messages[-1]["role"] == "user"
        assert p.messages[0]["content"] in p.text and p.messages[-1]["content"] in p.text


def _rm_cfg(*extra: str):
    from instructrl.config import load_config
    return load_config(None, ["rm.lr=0.001", "rm.batch_size=4", "rm.max_prompt_tokens=32",
                              "rm.max_response_tokens=16", *extra])


@needs_shared
def test_rm_trains_on_an_imported_hh_subset(tmp_path, tiny_model_dir):
    from instructrl.rundir import RunDir
    from instructrl.stages import reward

    run = RunDir(tmp_path / "run")
    imp = import_pairs(str(HH_FILE), run.root, limit=40, valid_fraction=0.25)
    out = reward.train(_rm_cfg(), run, tiny_model_dir)
    res = json.loads((out / "eval.json").read_text())
    split = {p.id: p.split for p in imp.prompts}
    n_train = sum(split[r.prompt_id] == "train" for r in imp.rankings)
    assert res["train_rankings"] == n_train > 0
    # One untied pair per K = 2 ranking; HH has no held-out labelers.
    assert res["valid"]["all"]["pairs"] == len(imp.rankings) - n_train > 0
    assert res["heldout_labelers"] == {}
    assert abs(res["bias_shift"]) > 0  # the stand-in demonstrations set the bias
    assert run.is_done("rm")


def test_rm_learns_the_preference_direction_from_imported_pairs(tmp_path, tiny_model_dir):
    """Chosen replies mention fish, rejected ones caves. The RM trained on the import must
    score the fish reply above the caves reply on valid prompts, judged against the source
    rows (not the import's own labels): had the import ranked the rejected reply first, the
    RM would prefer caves."""
    import random

    import torch

    from instructrl.generation import score_sequences
    from instructrl.modeling import ScalarHeadModel, load_tokenizer
    from instructrl.rundir import RunDir
    from instructrl.stages import reward
    from instructrl.templates import encode_example

    rng = random.Random(0)
    words = "the zorp blip red blue what does where is a".split()
    rows = []
    for i in range(80):
        q = " ".join(rng.choice(words) for _ in range(4))
        rows.append({"chosen": f"{H} {q} {i}?{A} the zorp eats fish",
                     "rejected": f"{H} {q} {i}?{A} it lives in caves"})
    src = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = RunDir(tmp_path / "run")
    imp = import_pairs(str(src), run.root, valid_fraction=0.25)
    cfg = _rm_cfg("rm.epochs=2")
    out = reward.train(cfg, run, tiny_model_dir)
    res = json.loads((out / "eval.json").read_text())
    assert res["valid"]["all"]["pairs"] == 20

    rm = ScalarHeadModel.from_pretrained(out).eval()
    tok = load_tokenizer(out)
    valid = [p for p in imp.prompts if p.split == "valid"]
    seqs = [encode_example(tok, p.text, reply, cfg.rm.max_prompt_tokens,
                           cfg.rm.max_response_tokens)
            for p in valid for reply in ("the zorp eats fish", "it lives in caves")]
    with torch.no_grad():
        s = score_sequences(rm, seqs, tok.pad_token_id).view(-1, 2)  # (prompts, [fish, caves])
    assert float((s[:, 0] > s[:, 1]).float().mean()) > 0.9
