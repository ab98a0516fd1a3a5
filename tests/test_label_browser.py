"""The labeling app in a real browser (Playwright driving Debian's Chromium, never a downloaded
one): a labeler rates and flags 4 responses, ranks them with one tie (drag and drop, then the
keyboard), submits, writes a demonstration; an admin exports; the exported files train a tiny
reward model with `instructrl rm`. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instructrl.cli import main as cli_main
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Demonstration, Prompt, Ranking, Response
from instructrl.label import store
from instructrl.label.app import create_app
from instructrl.label.samples import SampleSet
from instructrl.label.server import serve_in_thread

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = os.environ.get("INSTRUCTRL_CHROMIUM")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
PROMPT = Prompt(id="cat-poem", user_id="u1", category="generation", split="train",
                text="Write a short poem about a cat who is afraid of the rain. "
                     "Keep it under 40 words.")
DEMO_PROMPT = Prompt(id="capital", user_id="u2", category="open_qa", split="train",
                     text="What is the capital of France?")
RESPONSES = [
    Response("The cat looks up, the clouds turn grey;\nshe hides beneath the stairs all day.\n"
             "Each drop a drum, each gust a roar —\nshe waits for sun behind the door.", "ppo"),
    Response("Cats are mammals of the family Felidae. Rain is liquid water in the form of "
             "droplets.", "base"),
    Response("Soft paws, wide eyes, a window pane; / a tiny heart that fears the rain. / "
             "She curls up small and purrs in vain, / until the sunlight comes again.", "sft"),
    Response("I am sorry, but I cannot write poems.", "sft"),
]
RM_RECIPE = "rm: {lr: 0.001, batch_size: 4, max_prompt_tokens: 32, max_response_tokens: 16}\n"


def _chromium() -> str:
    if not CHROMIUM or not Path(CHROMIUM).exists():
        pytest.skip("browser test: INSTRUCTRL_CHROMIUM is not set or missing (`make test` runs "
                    "scripts/test-services.sh, which installs Debian's chromium)")
    return CHROMIUM


def test_label_rank_export_and_train_reward_model(tmp_path, tiny_model_dir):
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    app = create_app(f"sqlite:///{tmp_path}/labels.db")
    eng = app.state.engine
    store.create_user(eng, "admin", "admin-pass-1", "admin")
    store.create_user(eng, "alice", "alice-pass-1")
    store.import_records(eng, [("p", 1, PROMPT), ("p", 2, DEMO_PROMPT)],
                         [("s", 1, SampleSet(PROMPT.id, RESPONSES))])
    assert store.assign(eng, "rank") == 1 and store.assign(eng, "demo", limit=1) == 1
    # `demo` took the first prompt by id ("capital"); both tasks are alice's
    likert = {"A": 6, "B": 3, "C": 5, "D": 2}  # by the letters shown on the page
    flags = {"A": "moral_judgement", "B": "fails_instruction", "C": "bad_constraint",
             "D": "hallucination"}

    with serve_in_thread(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        page.goto(f"{base}/login")
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", "alice-pass-1")
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("My queue")
        page.click("#start")
        expect(page.locator("#ranking-widget .card")).to_have_count(4)

        # rate and flag the 4 responses
        letter_to_idx = {}
        for letter in "ABCD":
            card = page.locator(f"#response-{letter}")
            letter_to_idx[letter] = int(card.get_attribute("data-idx"))
            card.locator(f".likert-opt:has(input[value='{likert[letter]}']) span").click()
            card.locator(f"input[type=checkbox][value={flags[letter]}]").check()
        ranking = page.locator("#ranking-input")

        def groups_in_letters():
            idx_to_letter = {v: k for k, v in letter_to_idx.items()}
            return [[idx_to_letter[i] for i in g] for g in json.loads(ranking.input_value())]

        assert groups_in_letters() == [["A"], ["B"], ["C"], ["D"]]  # display order to start
        # drag D into the gap above the first row: D becomes the best, alone
        page.locator(".card[data-letter=D]").drag_to(page.locator(".gap[data-before='0']"))
        assert groups_in_letters() == [["D"], ["A"], ["B"], ["C"]]
        # keyboard: C up one half step joins B's row, a tie
        page.locator(".card[data-letter=C]").focus()
        page.keyboard.press("ArrowUp")
        assert groups_in_letters() == [["D"], ["A"], ["B", "C"]]
        # drag A onto D's row (a tie), then move it down out of the tie with the keyboard
        page.locator(".card[data-letter=A]").drag_to(page.locator(".tier[data-rank='1']"))
        assert groups_in_letters() == [["D", "A"], ["B", "C"]]
        page.locator(".card[data-letter=A]").focus()
        page.keyboard.press("ArrowDown")  # leaves D's row: its own row below
        page.keyboard.press("ArrowDown")  # ...joins B = C
        page.keyboard.press("ArrowDown")  # ...and passes it, alone at the bottom
        assert groups_in_letters() == [["D"], ["B", "C"], ["A"]]
        page.keyboard.press("ArrowUp")  # joins B = C again
        page.keyboard.press("ArrowUp")  # ...and passes it: D, A, B = C
        assert groups_in_letters() == [["D"], ["A"], ["B", "C"]]
        page.keyboard.press("ArrowUp")  # ties with D
        page.keyboard.press("ArrowDown")  # ...and leaves the tie again, below D
        final = [["D"], ["A"], ["B", "C"]]
        assert groups_in_letters() == final
        expect(page.locator(".tier.tied")).to_have_count(1)
        expect(page.locator("#ranking-status")).to_contain_text("1: D, 2: A, 3: B = C")
        page.fill("textarea[name=critique]", "D makes things up but B and C are no better.")
        page.screenshot(path=str(ARTIFACTS / "label-ranking-page.png"), full_page=True)
        page.locator("#ranking-widget").screenshot(path=str(ARTIFACTS / "label-ranking-widget.png"))
        page.click("#submit-ranking")

        # the next task: a demonstration
        expect(page.locator("#prompt-text")).to_have_text(DEMO_PROMPT.text)
        page.fill("textarea[name=response]", "The capital of France is Paris.")
        page.click("#demo-form button[type=submit]")
        expect(page.locator("#empty-queue")).to_be_visible()
        page.click("text=Log out")

        # admin: export both training files through the download links
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", "admin-pass-1")
        page.click("button[type=submit]")
        expect(page.locator("h1").first).to_have_text("Overview")
        page.screenshot(path=str(ARTIFACTS / "label-admin-page.png"), full_page=True)
        run = tmp_path / "run"
        for name in ("rankings", "demonstrations"):
            with page.expect_download() as dl:
                page.click(f"#export-train-{name}")
            (run / "data").mkdir(parents=True, exist_ok=True)
            dl.value.save_as(run / "data" / f"{name}.jsonl")
        browser.close()
    assert errors == []

    [r] = read_records(run / "data" / "rankings.jsonl", Ranking.from_dict)
    L = letter_to_idx
    assert r.prompt_id == PROMPT.id and r.labeler_id == "alice" and r.responses == RESPONSES
    assert r.ranking == [[L[x] for x in g] for g in final]
    assert r.likert == [likert[x] for x in sorted(L, key=L.get)]
    assert r.flags == [[flags[x]] for x in sorted(L, key=L.get)]
    assert r.critique == "D makes things up but B and C are no better."
    assert r.pairs() and (L["B"], L["C"]) not in r.pairs()  # the tie gives no pair
    [d] = read_records(run / "data" / "demonstrations.jsonl", Demonstration.from_dict)
    assert d == Demonstration(DEMO_PROMPT.id, "alice", "The capital of France is Paris.")

    # the CLI export writes the same training files (plus labelers.jsonl)
    cli_out = tmp_path / "cli_export"
    assert cli_main(["label", "export", "--db", f"sqlite:///{tmp_path}/labels.db",
                     "--out", str(cli_out)]) == 0
    for name in ("rankings", "demonstrations"):
        assert (cli_out / f"{name}.jsonl").read_text() == \
            (run / "data" / f"{name}.jsonl").read_text()

    # ...and they train a tiny reward model with `instructrl rm`, no conversion
    write_records(run / "data" / "prompts.jsonl", [PROMPT, DEMO_PROMPT])
    (run / "data" / "labelers.jsonl").write_text((cli_out / "labelers.jsonl").read_text())
    (tmp_path / "recipe.yaml").write_text(RM_RECIPE)
    assert cli_main(["rm", "--out", str(run), "--recipe", str(tmp_path / "recipe.yaml"),
                     "--init", str(tiny_model_dir)]) == 0
    result = json.loads((run / "rm" / "eval.json").read_text())
    assert result["train_rankings"] == 1 and result["bias_shift"] != 0.0
