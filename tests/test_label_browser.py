"""The labeling app in a real browser (Playwright driving Debian's Chromium, never a downloaded
one). Desktop: a labeler rates and flags 4 responses, cannot submit before ranking, ranks them
with one tie (drag and drop, then the keyboard), is warned that the ranking contradicts the
Likert scores and submits anyway, sees it saved, writes a demonstration; an admin exports and
reads the labels; the exported files train a tiny reward model with `instructrl rm`. Phone
(360 px, touch): every page fits the screen, ranking with the card buttons, the edit picker
keeps the response an edit was made from. Screenshots go to test-artifacts/."""

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

        # nothing is ranked until the labeler ranks: submitting now is stopped on the page
        assert ranking.input_value() == ""
        expect(page.locator("#ranking-status")).to_have_text("Not ranked yet.")
        task_url = page.url
        page.click("#submit-ranking")
        expect(page.locator("#ranking-status")).to_contain_text("Rank the responses first")
        assert page.url == task_url
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
        # D (Likert 2) is ranked above A (6), B (3) and C (5): a warning, not a submission
        page.click("#submit-ranking")
        expect(page.locator("#ranking-warning")).to_be_visible()
        expect(page.locator("#ranking-conflicts li")).to_have_count(3)
        expect(page.locator("#ranking-conflicts")).to_contain_text(
            "You ranked D above A, but scored D 2 and A 6.")
        assert page.url == task_url
        page.locator("#ranking-warning").screenshot(
            path=str(ARTIFACTS / "label-ranking-warning.png"))
        page.click("#submit-anyway")  # the labeler means it

        # the next task: a demonstration, under a note that the ranking is saved
        expect(page.locator("#note")).to_contain_text("Saved task #")
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
        page.click("#labels-link")
        expect(page.locator("#labels-count")).to_have_text("2 labels")
        expect(page.locator(".ranking-text")).to_have_text("D > A > B = C")
        page.screenshot(path=str(ARTIFACTS / "label-admin-labels.png"), full_page=True)
        page.goto(f"{base}/admin")
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


PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}
LONG_PROMPT = Prompt(
    id="long", user_id="u3", category="rewrite", split="train",
    text="Rewrite this for a child: https://example.org/a/very/long/address/without/any/spaces/"
         "that/would/push/a/page/sideways/if/nothing/wrapped/it " + "and some more words " * 12)


def _fits(page, name: str) -> None:
    """The page is no wider than the screen (nothing scrolls sideways); a screenshot."""
    page.screenshot(path=str(ARTIFACTS / f"label-phone-{name}.png"), full_page=True)
    width, screen = page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= screen == 360, f"{name}: {width} px wide on a {screen} px screen"


def test_phone_every_page_fits_touch_ranking_and_edit_keeps_its_base(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    app = create_app(f"sqlite:///{tmp_path}/labels.db")
    eng = app.state.engine
    store.create_user(eng, "admin", "admin-pass-1", "admin")
    store.create_user(eng, "bob-the-labeler", "bob-pass-123")
    store.import_records(eng, [("p", 1, PROMPT), ("p", 2, LONG_PROMPT)],
                         [("s", 1, SampleSet(PROMPT.id, RESPONSES)),
                          ("s", 2, SampleSet(LONG_PROMPT.id, RESPONSES[::-1]))])
    assert store.assign(eng, "rank", limit=1) == 1  # the cat poem
    assert store.assign(eng, "edit") == 2 and store.assign(eng, "demo", limit=1) == 1
    likert = {"A": 2, "B": 6, "C": 6, "D": 4}

    with serve_in_thread(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(**PHONE).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        answers: list[bool] = []  # what the labeler answers the next confirm() dialogs
        dialogs: list[str] = []

        def on_dialog(d):
            dialogs.append(d.message)
            d.accept() if answers.pop(0) else d.dismiss()
        page.on("dialog", on_dialog)

        page.goto(f"{base}/login")
        _fits(page, "login")
        page.fill("input[name=name]", "bob-the-labeler")
        page.fill("input[name=password]", "bob-pass-123")
        page.locator("button[type=submit]").tap()
        expect(page.locator("h1")).to_have_text("My queue")
        _fits(page, "queue")

        # ---- rank with the card buttons only (no drag, no keyboard)
        page.locator("#start").tap()
        expect(page.locator("#ranking-widget .card")).to_have_count(4)
        idx = {x: int(page.locator(f"#response-{x}").get_attribute("data-idx")) for x in "ABCD"}
        for x, v in likert.items():
            page.locator(f"#response-{x} .likert-opt:has(input[value='{v}']) span").tap()
        page.locator("#response-A input[value=fails_instruction]").tap()
        ranking = page.locator("#ranking-input")

        def letters():
            back = {v: k for k, v in idx.items()}
            return [[back[i] for i in g] for g in json.loads(ranking.input_value())]

        def tap(letter: str, button: str):
            page.locator(f".card[data-letter={letter}] button.{button}").tap()

        expect(page.locator(".card[data-letter=A] button.move-up")).to_be_disabled()
        tap("B", "move-up")
        assert letters() == [["B"], ["A"], ["C"], ["D"]]
        tap("C", "move-up")
        assert letters() == [["B"], ["C"], ["A"], ["D"]]
        tap("C", "tie-up")  # C = B
        assert letters() == [["B", "C"], ["A"], ["D"]]
        tap("D", "move-up")
        assert letters() == [["B", "C"], ["D"], ["A"]]
        tap("A", "tie-up")  # A = D ...
        assert letters() == [["B", "C"], ["D", "A"]]
        tap("A", "move-down")  # ... and out of the tie again, below D
        assert letters() == [["B", "C"], ["D"], ["A"]]
        expect(page.locator("#ranking-status")).to_contain_text("1: B = C, 2: D, 3: A")
        _fits(page, "rank")
        page.locator("#ranking-widget").screenshot(
            path=str(ARTIFACTS / "label-phone-ranking-widget.png"))
        page.locator("#submit-ranking").tap()  # agrees with the Likert scores: no warning
        expect(page.locator("#note")).to_contain_text("Saved task #")

        # ---- edit: the stored original is always the response the edit was made from
        expect(page.locator("#edit-form")).to_be_visible()
        text = page.locator("#edit-text")
        resp_text = {x: page.locator(f".pick:has(.letter:text-is('{x}')) .text").inner_text()
                     for x in "ABCD"}

        def pick(x: str):
            page.locator(f".pick:has(.letter:text-is('{x}')) header").tap()

        def checked() -> str:
            return page.locator("input[name=base]:checked").evaluate(
                "r => r.closest('.pick').querySelector('.letter').textContent")

        pick("B")  # untouched: no question, the text box takes B
        assert dialogs == [] and checked() == "B" and text.input_value() == resp_text["B"]
        text.fill("An edit of B.")
        answers.append(True)
        pick("C")  # edited: asked first; yes -> C's text
        assert len(dialogs) == 1 and checked() == "C" and text.input_value() == resp_text["C"]
        text.fill("A better poem, made from C.")
        answers.append(False)
        pick("A")  # no -> the edit AND its response stay (before: the radio moved to A)
        assert len(dialogs) == 2 and checked() == "C"
        assert text.input_value() == "A better poem, made from C."
        _fits(page, "edit")
        page.locator("#edit-form button[type=submit]").tap()
        expect(page.locator("#note")).to_contain_text("Saved task #")

        # ---- the long prompt's edit task and the demo page fit too
        _fits(page, "edit-long-prompt")
        page.goto(f"{base}/tasks/99999")
        expect(page.locator("h1")).to_have_text("404")
        expect(page.locator("header.top nav")).to_contain_text("My queue")
        _fits(page, "error")
        assert len(errors) == 1 and "status of 404" in errors[0]  # the page itself, on purpose
        errors.clear()
        page.goto(f"{base}/next")
        page.locator("details.skip summary").tap()
        page.fill("input[name=reason]", "The prompt is not in a language I read")
        page.locator("details.skip button[type=submit]").tap()
        expect(page.locator("#note")).to_contain_text("Skipped task #")
        _fits(page, "demo")
        page.fill("textarea[name=response]", "The capital of France is Paris.")
        page.locator("#demo-form button[type=submit]").tap()
        expect(page.locator("#empty-queue")).to_be_visible()
        page.locator("text=Log out").tap()

        # ---- admin pages
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", "admin-pass-1")
        page.locator("button[type=submit]").tap()
        expect(page.locator("h1").first).to_have_text("Overview")
        _fits(page, "admin")
        page.goto(f"{base}/admin/labels")
        expect(page.locator("#labels-count")).to_have_text("4 labels")  # rank, edit x 2, demo
        _fits(page, "admin-labels")
        browser.close()
    assert errors == []

    out = store.export_records(eng)["train"]
    [rank] = [r for r in out["rankings"] if r["responses"][0]["policy"] != "human"]
    assert rank["ranking"] == [sorted([idx["B"], idx["C"]]), [idx["D"]], [idx["A"]]] or \
        rank["ranking"] == [[idx["B"], idx["C"]], [idx["D"]], [idx["A"]]]
    assert rank["likert"] == [likert[x] for x in sorted(idx, key=idx.get)]
    [edit] = [r for r in out["rankings"] if r["responses"][0]["policy"] == "human"]
    assert edit["responses"][0]["text"] == "A better poem, made from C."
    assert edit["responses"][1]["text"] == resp_text["C"]  # the original it was made from
    assert [d["response"] for d in out["demonstrations"]] == [
        "A better poem, made from C.", "The capital of France is Paris."]
