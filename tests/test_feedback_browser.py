"""Real-browser test of the feedback studio: rank with a tie, mark a span, export; screenshots for docs/feedback.md.

Starts ``streamlit run workbench/app.py`` on 127.0.0.1 with the tiny random model, a
throw-away feedback database holding one project (responses already stored, so no
sampling wait) and an empty reward-model store; Playwright drives Debian's Chromium.
Skips when /usr/bin/chromium or the playwright package is missing (never runs
``playwright install``).

    .venv/bin/python -m pytest tests/test_feedback_browser.py -q
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ITEMS = [
    {"prompt": "Why does bread go stale?",
     "responses": ["Its starch recrystallises and pushes water out of the crumb. A cool cupboard slows this down.",
                   "Air dries it. My grandmother baked bread every Sunday, and she sang while kneading.",
                   "Bread goes stale because the fridge keeps it fresh forever."]},
    {"prompt": "Name a prime number.", "responses": ["7", "Eight is prime.", "Nine, probably."]},
]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (as root: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from core.feedback.store import FeedbackStore

    folder = tmp_path_factory.mktemp("feedback")
    db = FeedbackStore(folder / "fb.sqlite")
    pid = db.create_project("bread", policy="tiny-random-llama", k=3, seed=0, items=ITEMS)
    for n, item in enumerate(db.items(pid)):  # two earlier annotators, so the agreement figures have values
        db.submit_ranking(f"bob-{n}", "bob", item["id"], [1, 3, 2])
        for who, scores in (("bob", [6, 2, 3]), ("cy", [7, 2, 2])):
            for i, score in enumerate(scores):
                db.submit_rating(f"{who}-{n}-{i}", who, item["id"], i, score)
    from workbench.local_server import local_server

    env = dict(os.environ, RLHF_WORKBENCH_MODEL="tiny-random-llama", RLHF_WORKBENCH_FEEDBACK_DB=str(db.path),
               RLHF_WORKBENCH_REWARD_MODELS=str(folder / "rms"), RLHF_WORKBENCH_RUNS=str(folder / "runs"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with local_server(env, folder / "server.log") as server:
        yield server.url, db, folder


def _idle(page):
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")


def _choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox by typing its beginning (the list filters as you type)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.fill(option)
    page.keyboard.press("Enter")


def _wait_until(cond, timeout=60.0):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.3)


def test_rank_mark_a_span_and_export_in_a_browser(server):
    url, db, folder = server
    pid = db.project("bread")["id"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{url}/feedback")
        page.wait_for_selector("h1:has-text('Feedback studio')")
        page.get_by_label("Your name (labels are saved under it)").fill("ada")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Prompt 1 of 2")
        _idle(page)
        # mark the off-topic sentence of response 2 as a C1 error, by segment
        _choose(page, "Response", "2")
        _idle(page)
        _choose(page, "Sub-sentence", "2: My grandmother")
        _idle(page)
        page.get_by_role("button", name="Add span").click()
        _idle(page)
        page.get_by_role("button", name="Save spans of response 2").scroll_into_view_if_needed()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "feedback_spans.png"))
        page.get_by_role("button", name="Save spans of response 2").click()
        _wait_until(lambda: db.labels(pid)["spans"])
        review = db.labels(pid)["spans"][0]  # only ada marks spans
        text = ITEMS[0]["responses"][1]
        start = text.index("My grandmother")
        assert review["response_idx"] == 1
        assert [(s["start"], s["end"], s["category"], s["segment"]) for s in review["spans"]] == [(start, len(text), "C1", 1)]
        _idle(page)
        # rank 1, 2, 2 (a tie) with the per-response rank inputs, then submit the form
        ranks = page.get_by_role("spinbutton", name="Rank (1 = best)", exact=True)
        for i, r in enumerate([1, 2, 2]):
            ranks.nth(i).fill(str(r))
        page.get_by_role("button", name="Submit ratings and ranking").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "feedback_label.png"))
        page.get_by_role("button", name="Submit ratings and ranking").click()
        ada = lambda: [r["ranks"] for r in db.labels(pid)["rankings"] if r["annotator"] == "ada"]  # noqa: E731
        _wait_until(ada)
        assert ada() == [[1, 2, 2]]
        page.wait_for_selector("text=Prompt 2 of 2")
        _idle(page)
        # export every format
        page.get_by_role("tab", name="Agreement & export").click()
        out = folder / "export"
        box = page.get_by_label("Folder for every format (with the datasets folder and parquet)")
        box.fill(str(out))
        page.keyboard.press("Enter")
        _idle(page)
        page.get_by_role("button", name="Export all").click()
        _wait_until(lambda: (out / "agreement.json").is_file())
        rows = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
        assert [(r["chosen_index"], r["rejected_index"]) for r in rows if r["annotator"] == "ada"] == [(0, 1), (0, 2)]
        agreement = json.loads((out / "agreement.json").read_text())
        assert agreement["rankings"]["pairs"][0]["annotators"] == ["ada", "bob"] and agreement["rankings"]["overall"] == 1.0
        assert agreement["ratings"]["interval"]["alpha"] is not None
        assert json.loads((out / "qa_feedback" / "feedback.json").read_text())[0]["prediction 1"] == text
        page.wait_for_selector("text=Written:")
        _idle(page)
        page.screenshot(path=str(SHOTS / "feedback_export.png"))
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
