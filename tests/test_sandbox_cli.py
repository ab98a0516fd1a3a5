"""`instructrl sandbox generate|demonstrate` through a run directory, and the pipeline API."""

import json

from instructrl.cli import main
from instructrl.config import SandboxConfig
from instructrl.data.jsonl import read_records
from instructrl.data.records import Demonstration, Labeler, Prompt, Response
from instructrl.sandbox.generate import Sandbox, label_rankings

SMALL = ["--set", "sandbox.n_prompts=400", "--set", "sandbox.n_users=30",
         "--set", "sandbox.n_ptx_docs=50"]


def test_generate_prepare_demonstrate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["sandbox", "generate", "--out", str(run)] + SMALL) == 0
    out = capsys.readouterr().out
    assert "400 prompts" in out and "open_qa" in out and "few-shot" in out
    raw = read_records(run / "data" / "raw_prompts.jsonl", Prompt.from_dict)
    assert len(raw) == 400 and all(p.split is None for p in raw)
    labelers = read_records(run / "data" / "labelers.jsonl", Labeler.from_dict)
    assert sum(lab.heldout for lab in labelers) == 4 and len(labelers) == 14
    ptx = [json.loads(x) for x in (run / "data" / "ptx.jsonl").read_text().splitlines()]
    assert len(ptx) == 50 and all(isinstance(x["text"], str) and x["text"] for x in ptx)

    # demonstrate needs prepared prompts: an unsplit file is an error and writes nothing.
    (run / "data" / "prompts.jsonl").write_text((run / "data" / "raw_prompts.jsonl").read_text())
    assert main(["sandbox", "demonstrate", "--out", str(run)] + SMALL) == 2
    assert "split" in capsys.readouterr().err
    assert not (run / "data" / "demonstrations.jsonl").exists()

    assert main(["data", "prepare", "--out", str(run)]) == 0
    assert main(["sandbox", "demonstrate", "--out", str(run)] + SMALL) == 0
    prompts = {p.id: p for p in read_records(run / "data" / "prompts.jsonl", Prompt.from_dict)}
    demos = read_records(run / "data" / "demonstrations.jsonl", Demonstration.from_dict)
    held = {lab.id for lab in labelers if lab.heldout}
    assert demos and not {d.labeler_id for d in demos} & held
    assert all(prompts[d.prompt_id].split in ("train", "valid") for d in demos)
    assert not any(prompts[d.prompt_id].meta.get("unclear") for d in demos)
    wanted = [p for p in prompts.values() if p.split in ("train", "valid")
              and not p.meta.get("unclear")]
    assert len(demos) == len(wanted)


def test_label_rankings_and_heldout_judge():
    cfg = SandboxConfig(n_prompts=200, n_users=20)
    sb = Sandbox(cfg)
    from instructrl.sandbox.tasks import reference_answer, write_prompts
    prompts = write_prompts(sb.world, 60, 20, seed=0)
    samples = [[Response(reference_answer(sb.world, p), "sft"),
                Response("q: what is it? a:", "base"),
                Response("you are a stupid idiot.", "base")] for p in prompts]
    ranks = label_rankings(cfg, prompts, samples, salt="round0")
    assert ranks == sb.label_rankings(prompts, samples, salt="round0")
    held = {lab.id for lab in sb.heldout_labelers}
    assert not {r.labeler_id for r in ranks} & held
    assert len({r.labeler_id for r in ranks}) > 3
    kept = [r for r in ranks if r.skipped is None]
    top = sum(0 in r.ranking[0] for r in kept) / len(kept)
    assert top > 0.7
    judged = [sb.heldout_judge(p, s[0].text, s[2].text) for p, s in zip(prompts, samples)]
    assert {j.labeler_id for j in judged} <= held
    assert sum(j.score for j in judged) / len(judged) > 0.7
    assert all(1 <= x <= 7 for j in judged for x in j.likert)
