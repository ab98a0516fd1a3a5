"""The evaluation report in a real browser (Playwright driving Debian's Chromium, never a
downloaded one): every plot of a report with every section (held-out RM, people, TruthfulQA,
toxicity, bias, tax) renders, the page needs nothing from the network, and a full-page
screenshot goes to test-artifacts/eval-report.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_eval_run import eval_recipe, real_run  # noqa: F401  (fixtures shared with that file)

from instructrl.cli import main as cli_main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _chromium() -> str:
    for c in (os.environ.get("INSTRUCTRL_CHROMIUM"), "/usr/bin/chromium"):
        if c and Path(c).exists():
            return c
    pytest.skip("browser test: no Chromium (`bash scripts/test-services.sh` installs Debian's)")


def test_every_plot_of_the_report_renders(real_run, tiny_rm_dir, tmp_path,  # noqa: F811
                                          monkeypatch):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = eval_recipe(tmp_path, heldout_rm=json.dumps(str(tiny_rm_dir)))
    assert cli_main(["eval", "--out", str(real_run), "--recipe", str(recipe)]) == 0
    page_path = real_run / "eval" / "report.html"
    html = page_path.read_text()
    n_plots = html.count("<figure class='plot'")
    assert n_plots >= 8
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all(
                "figure.plot img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, "
                "e.naturalHeight, e.getBoundingClientRect().width])")
            page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
            captions = page.eval_on_selector_all("figure.plot figcaption",
                                                 "els => els.map(e => e.textContent)")
            judges = page.eval_on_selector_all("ul.judges-ran li",
                                               "els => els.map(e => e.textContent)")
        finally:
            browser.close()
    assert len(sizes) == n_plots
    for alt, complete, w, h, shown in sizes:
        assert complete and w > 100 and h > 100 and shown > 50, alt
    assert captions and all("judge" in c for c in captions), captions  # every plot names it
    assert any("held-out reward model" in j for j in judges)
    # Self-contained: nothing but the file itself and inline images was requested.
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
