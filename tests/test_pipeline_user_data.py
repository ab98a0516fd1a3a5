"""`instructrl pipeline` on a user's own model and data (issue 17): the recipe's `sources`
imported once, SFT, an RM on the given preferences (no sandbox labelers anywhere), SFT
selection, PPO-ptx and PPO; and, without preferences, a stop where samples wait for people,
continued once their rankings are in RUN/data/rankings.jsonl."""

from __future__ import annotations

import json
import random
from pathlib import Path

from instructrl.cli import main
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Ranking, Response
from instructrl.rundir import RunDir

from conftest import WORDS

SETTINGS = """\
sft: {{epochs: 1, lr: 0.001, batch_size: 8, select_prompts: 4, max_prompt_tokens: 32,
      max_response_tokens: 16}}
collect: {{k: 2, n_prompts: 6, n_valid_prompts: 2, max_new_tokens: 6}}
rm: {{lr: 0.001, batch_size: 4, max_prompt_tokens: 32, max_response_tokens: 16}}
ppo: {{episodes: 16, batch_size: 8, mini_batch_size: 4, micro_batch_size: 4, lr: 0.001,
      max_prompt_tokens: 32, max_new_tokens: 6, ptx_per_episode: 1, ptx_max_tokens: 16,
      warmup_iters: 1, checkpoint_every: 1}}
pipeline: {{rounds: 0, base_model: {base}}}
sources:
  demonstrations: [{{path: {data}/alpaca.jsonl}}]
{preferences}  ptx: [{{path: {data}/web.jsonl, format: text}}]
  valid_fraction: 0.2
  test_fraction: 0.2
"""


def _write_sources(root: Path) -> Path:
    rng = random.Random(0)

    def words(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    data = root / "user-data"
    data.mkdir(parents=True)
    alpaca = [{"instruction": f"what does the {rng.choice(WORDS)} eat {i}", "input": "",
               "output": "the zorp eats " + words(i % 4 + 1)} for i in range(30)]
    pairs = [{"prompt": f"where does the {rng.choice(WORDS)} live {i}",
              "chosen": "in caves " + words(2), "rejected": words(3)} for i in range(24)]
    web = [{"text": words(20)} for _ in range(20)]
    for name, rows in (("alpaca", alpaca), ("pairs", pairs), ("web", web)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _recipe(tmp_path: Path, base: Path, preferences: bool) -> Path:
    data = _write_sources(tmp_path)
    pref = f"  preferences: [{{path: {data}/pairs.jsonl, format: pairs}}]\n" if preferences else ""
    path = tmp_path / "recipe.yaml"
    path.write_text(SETTINGS.format(base=base, data=data, preferences=pref))
    return path


def test_pipeline_on_user_data_with_preferences(tiny_model_dir, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, preferences=True)
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), "--recipe", str(recipe)]) == 0
    run = RunDir(out)
    summary = json.loads((out / "pipeline.json").read_text())
    assert set(summary["policies"]) == {"sft", "ppo-ptx", "ppo"}
    assert not (out / "collect-0").exists()  # the RM trained on the given preferences
    labelers = {r.labeler_id for r in run.rankings()}
    assert labelers == {"pairs"}  # nobody simulated ranked anything
    assert "rm" in json.loads((out / "sft" / "selection.json").read_text())
    assert json.loads((out / "rm" / "eval.json").read_text())["train_rankings"] > 0
    assert (out / "config.yaml").exists() and run.is_done("data")
    # A rerun imports nothing again and trains nothing again.
    assert main(["pipeline", "--out", str(out), "--recipe", str(recipe)]) == 0
    assert "[data import] done already" in capsys.readouterr().out


def test_pipeline_without_preferences_waits_for_people_then_continues(tiny_model_dir,
                                                                       tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, preferences=False)
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), "--recipe", str(recipe)]) == 0
    said = capsys.readouterr().out
    assert "waits for people" in said and "instructrl label export" in said
    assert not (out / "rm").exists() and not (out / "pipeline.json").exists()
    run = RunDir(out)
    assert run.done_info("collect-0")["labelled_by"] == "nobody yet"
    # People rank the samples (as `instructrl label export` writes them): longest first.
    samples = [json.loads(x) for x in
               (out / "collect-0" / "samples.jsonl").read_text().splitlines() if x.strip()]
    ranked = []
    for s in samples:
        resp = [Response(r["text"], r["policy"]) for r in s["responses"]]
        order = sorted(range(len(resp)), key=lambda i: -len(resp[i].text))
        ranked.append(Ranking(s["prompt_id"], "person-1", resp, [[i] for i in order]))
    write_records(out / "data" / "rankings.jsonl", ranked)
    assert main(["pipeline", "--out", str(out), "--recipe", str(recipe)]) == 0
    assert (out / "pipeline.json").exists()
    assert read_records(out / "data" / "rankings.jsonl", Ranking.from_dict) == ranked
