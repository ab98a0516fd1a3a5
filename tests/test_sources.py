"""A user's own data into RUN/data (instructrl.data.sources, `instructrl data import`)."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from instructrl.cli import main
from instructrl.config import RunConfig, SourcesConfig
from instructrl.data.formats import own_user
from instructrl.data.sources import Source, import_sources, open_rows, read_source
from instructrl.errors import InputError
from instructrl.rundir import RunDir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
SEED_TASKS = SHARED / "self-instruct-seed-tasks.jsonl"
needs_shared = pytest.mark.skipif(not (HH_FILE.exists() and SEED_TASKS.exists()),
                                  reason=f"shared data not found at {SHARED}")

ALPACA = [{"instruction": f"Name fish number {i}.", "input": "" if i % 2 else "in French",
           "output": f"fish {i}"} for i in range(6)]


def write(path: Path, rows: list[dict]) -> Path:
    """`rows` in the file format `path`'s name says."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith((".csv", ".tsv")):
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]),
                               delimiter="\t" if name.endswith(".tsv") else ",")
            w.writeheader()
            w.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                         for k, v in r.items()} for r in rows)
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if name.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")
    return path


def cfg_with(**sources) -> RunConfig:
    fractions = {k: sources.pop(k) for k in ("valid_fraction", "test_fraction", "seed")
                 if k in sources}
    return RunConfig(sources=SourcesConfig(**{k: tuple(v) for k, v in sources.items()},
                                           **fractions))


def data_files(run: Path) -> dict[str, bytes]:
    d = run / "data"
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())} if d.exists() else {}


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.json", "a.csv", "a.tsv",
                                  "a.parquet"])
def test_every_file_type_reads_the_same_records(tmp_path, name):
    path = write(tmp_path / name, ALPACA)
    got = read_source(Source(kind="demonstrations", path=str(path)), progress=False)
    (tmp_path / "base").mkdir()
    base = read_source(Source(kind="demonstrations",
                              path=str(write(tmp_path / "base" / "a.jsonl", ALPACA))),
                       progress=False)
    assert got.format == "alpaca" and got.rows == 6
    assert got.prompts == base.prompts and got.demonstrations == base.demonstrations
    assert got.prompts[0].text == "Name fish number 0.\n\nin French"


def test_message_lists_through_csv_and_parquet_and_json_lines_named_json(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(3)]
    reads = []
    for name in ("m.csv", "m.parquet", "m.jsonl"):
        reads.append(read_source(Source(kind="demonstrations", path=str(write(tmp_path / name,
                                                                              rows))),
                                 progress=False))
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reads.append(read_source(Source(kind="demonstrations", path=str(lines)), progress=False))
    assert all(r.prompts == reads[0].prompts for r in reads)
    assert all([(d.prompt_id, d.response) for d in r.demonstrations]
               == [(d.prompt_id, d.response) for d in reads[0].demonstrations] for r in reads)
    assert [d.response for d in reads[0].demonstrations] == ["a0", "a1", "a2"]


def test_directories_go_to_datasets(tmp_path):
    """A folder of data files (as `hf download --local-dir` leaves it) and a `save_to_disk`
    directory, both read offline through `datasets`."""
    import datasets

    folder = tmp_path / "downloaded" / "data"
    folder.mkdir(parents=True)
    write(folder / "train-00000-of-00001.parquet", ALPACA)
    got = read_source(Source(kind="demonstrations", path=str(tmp_path / "downloaded")),
                      progress=False)
    assert got.format == "alpaca" and len(got.demonstrations) == 6
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA[:2]),
                          "test": datasets.Dataset.from_list(ALPACA[2:5])}
                         ).save_to_disk(str(tmp_path / "saved"))
    got = read_source(Source(kind="demonstrations", path=str(tmp_path / "saved"),
                             split="test"), progress=False)
    assert [d.response for d in got.demonstrations] == ["fish 2", "fish 3", "fish 4"]
    with pytest.raises(InputError, match="no split 'valid' \\(splits: train, test\\)"):
        read_source(Source(kind="demonstrations", path=str(tmp_path / "saved"),
                           split="valid"), progress=False)


def test_rows_are_numbered_as_the_file_has_them(tmp_path):
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n" + json.dumps(ALPACA[0]) + "\n\n" + json.dumps(ALPACA[1]) + "\n")
    assert [n for n, _ in open_rows(Source(kind="demonstrations", path=str(jl)))[2]] == [2, 4]
    cv = tmp_path / "d.csv"
    cv.write_text('instruction,output\n"two\nlines",x\nb,y\n')
    assert [n for n, _ in open_rows(Source(kind="demonstrations", path=str(cv)))[2]] == [3, 4]
    cv.write_text('instruction,output\na,x\nb,y,z\n')
    with pytest.raises(InputError, match=r"d.csv:3: 1 more cells than the header's 2"):
        list(open_rows(Source(kind="demonstrations", path=str(cv)))[2])
    js = tmp_path / "one.json"
    js.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert [r for _, r in open_rows(Source(kind="prompts", path=str(js)))[2]] == [
        {"messages": [{"role": "user", "content": "hi"}]}]


def test_import_writes_every_file_and_the_stages_read_them(tmp_path):
    demos = write(tmp_path / "alpaca.json", ALPACA)
    pairs = write(tmp_path / "pairs.jsonl", [
        {"prompt": "Name fish number 1.", "chosen": "cod", "rejected": "rock"},  # a demo's
        {"prompt": "Why is the sea blue?", "chosen": "light", "rejected": "paint"}])
    prompts = write(tmp_path / "prompts.csv", [{"prompt": "Tell me a joke."},
                                               {"prompt": "Why is the sea blue?"}])
    ptx = write(tmp_path / "web.parquet", [{"text": "The zorp eats fish."}, {"text": ""},
                                           {"text": "Caves are dark."}])
    run = RunDir(tmp_path / "run")
    lines = import_sources(cfg_with(demonstrations=[{"path": str(demos)}],
                                    preferences=[{"path": str(pairs)}],
                                    prompts=[{"path": str(prompts)}],
                                    ptx=[{"path": str(ptx)}],
                                    valid_fraction=0.25, test_fraction=0.25),
                           run, progress=False)
    by_id = run.prompts_by_id()
    texts = {p.text: p for p in by_id.values()}
    # A prompt in several sources is one record with one id and one split; prompts that
    # come only from preferences or prompts sources are prompts too.
    assert len(by_id) == 6 + 2
    assert {"Tell me a joke.", "Why is the sea blue?"} <= set(texts)
    assert Counter(p.split for p in by_id.values()) == {"train": 4, "valid": 2, "test": 2}
    demos_read = run.demonstrations()
    assert len(demos_read) == 6 and all(d.prompt_id in by_id for d in demos_read)
    assert {d.labeler_id for d in demos_read} == {"alpaca"}
    rankings = run.rankings()
    assert [by_id[r.prompt_id].text for r in rankings] == ["Name fish number 1.",
                                                           "Why is the sea blue?"]
    assert {r.labeler_id for r in rankings} == {"pairs"}
    assert run.ptx_texts() == ["The zorp eats fish.", "Caves are dark."]
    assert any("skipped 1 (empty text)" in line for line in lines)
    assert any("8 prompts without a user id split by prompt" in line for line in lines)

    from instructrl.stages.common import pretraining_examples

    class Tok:  # one token per word is all pretraining_examples needs to show it sampled
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    ex = pretraining_examples(run.ptx_texts(), Tok(), 4, 2, seed=0)
    assert len(ex) == 4 and all(q == [] and 1 <= len(r) <= 2 for q, r in ex)


def test_split_by_user_keeps_each_user_in_one_split_and_is_order_free(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}", "user_id": f"u{i % 10}"}
            for i in range(100)]
    src = write(tmp_path / "d.jsonl", rows)
    run = RunDir(tmp_path / "run")
    lines = import_sources(cfg_with(demonstrations=[{"path": str(src)}], valid_fraction=0.2,
                                    test_fraction=0.1, seed=1), run, progress=False)
    prompts = run.prompts()
    users = {s: {p.user_id for p in prompts if p.split == s} for s in ("train", "valid", "test")}
    assert (len(users["train"]), len(users["valid"]), len(users["test"])) == (7, 2, 1)
    assert not (users["train"] & users["valid"] or users["train"] & users["test"]
                or users["valid"] & users["test"])
    assert any("10 users split by user" in line for line in lines)
    # The rows in another order, a different seed
    rev = write(tmp_path / "rev.jsonl", rows[::-1])
    run2 = RunDir(tmp_path / "run2")
    import_sources(cfg_with(demonstrations=[{"path": str(rev)}], valid_fraction=0.2,
                            test_fraction=0.1, seed=1), run2, progress=False)
    assert {p.id: p.split for p in run2.prompts()} == {p.id: p.split for p in prompts}
    run3 = RunDir(tmp_path / "run3")
    import_sources(cfg_with(demonstrations=[{"path": str(src)}], valid_fraction=0.2,
                            test_fraction=0.1, seed=2), run3, progress=False)
    assert {p.id: p.split for p in run3.prompts()} != {p.id: p.split for p in prompts}


def test_without_user_ids_each_prompt_is_its_own_user(tmp_path):
    src = write(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "response": "a"} for i in range(40)])
    run = RunDir(tmp_path / "run")
    import_sources(cfg_with(demonstrations=[{"path": str(src)}], valid_fraction=0.25,
                            test_fraction=0.0), run, progress=False)
    prompts = run.prompts()
    assert all(p.user_id == own_user(p.id) for p in prompts)
    assert Counter(p.split for p in prompts) == {"train": 30, "valid": 10}


@pytest.mark.parametrize("bad, where, field", [
    ({"instruction": "x"}, 3, "output"),
    ({"instruction": 5, "output": "y"}, 3, "instruction"),
    ({"instruction": "", "output": "y"}, 3, "instruction"),
])
def test_a_bad_row_names_file_row_field_and_nothing_is_written(tmp_path, bad, where, field):
    good = write(tmp_path / "good.jsonl", ALPACA)
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [ALPACA[0], ALPACA[1], bad]))
    ptx = write(tmp_path / "t.jsonl", [{"text": "hello"}])
    run = RunDir(tmp_path / "run")
    cfg = cfg_with(demonstrations=[{"path": str(good)}, {"path": str(src)}],
                   ptx=[{"path": str(ptx)}])
    with pytest.raises(InputError) as e:
        import_sources(cfg, run, progress=False)
    assert (e.value.path, e.value.line, e.value.field) == (str(src), where, field)
    assert str(e.value).startswith(f"{src}:{where}: field '{field}'")
    assert data_files(run.root) == {}
    # --force over an earlier import: the old files stay as they were.
    import_sources(cfg_with(demonstrations=[{"path": str(good)}], ptx=[{"path": str(ptx)}]),
                   run, progress=False)
    before = data_files(run.root)
    with pytest.raises(InputError):
        import_sources(cfg, run, force=True, progress=False)
    assert data_files(run.root) == before
    assert not [f for f in (run.root / "data").iterdir() if f.name.startswith(".")]


def test_errors_name_the_users_column_and_a_mapped_column_must_exist(tmp_path):
    rows = [{"question": "q", "answer": "a"}, {"question": "q2", "answer": 3}]
    src = write(tmp_path / "qa.jsonl", rows)
    entry = {"path": str(src), "columns": {"prompt": "question", "response": "answer"}}
    with pytest.raises(InputError) as e:
        import_sources(cfg_with(demonstrations=[entry]), RunDir(tmp_path / "r"),
                       progress=False)
    assert (e.value.line, e.value.field) == (2, "answer")
    entry = {"path": str(src), "columns": {"prompt": "quesiton", "response": "answer"}}
    with pytest.raises(InputError, match="column 'quesiton' not in the data"):
        import_sources(cfg_with(demonstrations=[entry]), RunDir(tmp_path / "r"),
                       progress=False)
    with pytest.raises(InputError) as e:  # no format fits: say which columns there are
        import_sources(cfg_with(demonstrations=[{"path": str(src)}]), RunDir(tmp_path / "r"),
                       progress=False)
    assert e.value.field == "sources.demonstrations[0].format" and "answer, question" in str(
        e.value)
    assert data_files(tmp_path / "r") == {}


@pytest.mark.parametrize("entry, field", [
    ({"path": "x.jsonl", "format": "text"}, "sources.demonstrations[0].format"),
    ({"path": "x.jsonl", "limit": 0}, "sources.demonstrations[0].limit"),
    ({"path": "x.jsonl", "colums": {}}, "sources.demonstrations[0].colums"),
    ({"path": "x.jsonl", "category": "poems"}, "sources.demonstrations[0].category"),
    ({"format": "alpaca"}, "sources.demonstrations[0].path"),
])
def test_bad_entries_are_named_before_any_data_is_read(tmp_path, entry, field):
    with pytest.raises(InputError) as e:
        import_sources(cfg_with(demonstrations=[entry]), RunDir(tmp_path / "r"),
                       progress=False)
    assert e.value.field == field


def test_existing_files_need_force_and_a_ptx_import_leaves_the_others(tmp_path):
    src = write(tmp_path / "a.jsonl", ALPACA)
    run = RunDir(tmp_path / "run")
    import_sources(cfg_with(demonstrations=[{"path": str(src)}]), run, progress=False)
    assert sorted(data_files(run.root)) == ["demonstrations.jsonl", "prompts.jsonl",
                                            "rankings.jsonl"]
    assert run.rankings() == []
    before = data_files(run.root)
    with pytest.raises(InputError, match="--force"):
        import_sources(cfg_with(demonstrations=[{"path": str(src)}]), run, progress=False)
    ptx = write(tmp_path / "t.jsonl", [{"text": "hello"}])
    import_sources(cfg_with(ptx=[{"path": str(ptx)}]), run, progress=False)
    after = data_files(run.root)
    assert after.pop("ptx.jsonl") == b'{"text": "hello"}\n' and after == before
    lim = write(tmp_path / "b.jsonl", ALPACA[:2])
    import_sources(cfg_with(demonstrations=[{"path": str(lim)}]), run, force=True,
                   progress=False)
    assert len(run.prompts()) == 2 and run.ptx_texts() == ["hello"]


def test_limit_and_stand_in_demonstrations_from_preferences(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": "bad"} for i in range(10)]
    rows.insert(3, {"prompt": "q3", "chosen": "same", "rejected": "same"})
    src = write(tmp_path / "p.jsonl", rows)
    run = RunDir(tmp_path / "run")
    lines = import_sources(cfg_with(preferences=[{"path": str(src), "limit": 8,
                                                  "labeler": "team"}],
                                    valid_fraction=0.25, test_fraction=0.0), run,
                           progress=False)
    rankings = run.rankings()
    assert len(rankings) == 7 and {r.labeler_id for r in rankings} == {"team"}
    assert any("8 rows -> 7 prompts, 7 rankings; skipped 1 (identical responses)" in line
               for line in lines)
    split = {p.id: p.split for p in run.prompts()}
    demos = run.demonstrations()
    # One per train prompt: the chosen response of its ranking.
    assert {d.prompt_id for d in demos} == {i for i, s in split.items() if s == "train"}
    chosen = {r.prompt_id: r.responses[r.ranking[0][0]].text for r in rankings}
    assert all(d.response == chosen[d.prompt_id] for d in demos)
    assert any("stands in" in line for line in lines)


def test_a_hub_id_goes_to_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake(path, **kwargs):
        calls.append((path, kwargs))
        return [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    r = read_source(Source(kind="demonstrations", path="someone/some-data", name="en",
                           split="sft", data_dir="part1", limit=1), progress=False)
    assert calls == [("someone/some-data", {"name": "en", "split": "sft",
                                            "data_dir": "part1"})]
    assert r.name == "someone/some-data[sft]" and r.rows == 1 and len(r.demonstrations) == 1


@pytest.mark.parametrize("exc", [ConnectionError("Couldn't reach 'x' on the Hub"),
                                 OSError("offline")])
def test_an_unreachable_hub_id_is_one_line(tmp_path, monkeypatch, exc):
    import datasets

    def fake(path, **kwargs):
        raise exc

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as e:
        read_source(Source(kind="preferences", path="someone/pairs", where="--preferences"),
                    progress=False)
    msg = str(e.value)
    assert "'someone/pairs'" in msg and "hf download someone/pairs --repo-type dataset" in msg
    assert "\n" not in msg and e.value.__suppress_context__


def test_offline_hub_id_not_cached_is_one_clear_line_from_the_cli(tmp_path):
    """The real `datasets` in offline mode (HF_HUB_OFFLINE must be set before it is imported,
    hence a new process), for an id no cache holds: exit 2 and one line, no traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "instructrl.cli", "data", "import", "--out",
                          str(out), "--preferences", "nobody-here/not-cached-pairs"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "'nobody-here/not-cached-pairs'" in err[0] and "hf download" in err[0]
    assert "offline" in err[0]
    assert data_files(out) == {}


def test_cli_quick_form_and_recipe_form(tmp_path, capsys):
    qa = write(tmp_path / "qa.csv", [{"question": f"q{i}", "answer": f"a{i}", "topic": "x"}
                                     for i in range(5)])
    run = tmp_path / "run"
    assert main(["data", "import", "--out", str(run), "--demonstrations", str(qa),
                 "--column", "prompt=question", "--column", "response=answer",
                 "--category", "open_qa", "--set", "sources.valid_fraction=0.4",
                 "--set", "sources.test_fraction=0"]) == 0
    out = capsys.readouterr().out
    assert "demonstrations" in out and "wrote" in out
    prompts = RunDir(run).prompts()
    assert {p.category for p in prompts} == {"open_qa"}
    assert Counter(p.split for p in prompts) == {"train": 3, "valid": 2}
    assert main(["data", "import", "--out", str(tmp_path / "r3"), "--demonstrations",
                 str(qa)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"sources:\n  prompts:\n    - {{path: {qa}, format: prompts, "
                      f"columns: {{prompt: question}}}}\n")
    assert main(["data", "import", "--out", str(run), "--recipe", str(recipe)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["data", "import", "--out", str(run), "--recipe", str(recipe),
                 "--force"]) == 0
    assert len(RunDir(run).prompts()) == 5 and RunDir(run).demonstrations() == []
    assert main(["data", "import", "--out", str(tmp_path / "r2")]) == 2
    assert "no sources" in capsys.readouterr().err


@needs_shared
def test_the_shared_files_import_together(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = cfg_with(demonstrations=[{"path": str(SEED_TASKS)}],
                   preferences=[{"path": str(HH_FILE), "limit": 200}],
                   prompts=[{"path": str(HH_FILE), "limit": 300}])
    lines = import_sources(cfg, run, progress=False)
    assert any("(self-instruct): 175 rows -> 175 prompts, 175 demonstrations" in x
               for x in lines)
    assert any("(hh): 200 rows" in x for x in lines)
    prompts = run.prompts_by_id()
    # The HH prompts of the preferences are among the 300 of the prompts source: one each.
    assert len(prompts) == 175 + 300
    assert {r.labeler_id for r in run.rankings()} == {"hh"}
    hh = [p for p in prompts.values() if p.id.startswith("hh-")]
    assert all(p.messages and p.messages[-1]["role"] == "user" for p in hh)
    assert sum(len(p.messages) > 1 for p in hh) > 100  # multi-turn dialogues as turns


def test_a_dataclass_sources_config_round_trips_through_replace():
    # The CLI's quick form replaces the recipe's sources with dataclasses.replace.
    cfg = cfg_with(prompts=[{"path": "a.jsonl"}])
    new = dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, prompts=(),
                                                               ptx=({"path": "t.jsonl"},)))
    assert new.sources.ptx[0]["path"] == "t.jsonl" and not new.sources.prompts
