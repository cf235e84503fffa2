"""Two browser sessions using the workbench at once (Playwright + Debian's Chromium, as tests/test_browser.py).

Two isolated browser contexts (two users: separate cookies, separate Streamlit sessions)
upload different preference files at the same time and each sees only its own; then one
moves an explorer weight slider and the other's heatmap does not change. Skipped, with the
reason, where /usr/bin/chromium is missing.

    .venv/bin/python -m pytest tests/test_browser_sessions.py -q
"""

from __future__ import annotations

import json

from test_browser import ARGS, CHROMIUM, _heatmap_total, _open, server, sync_api  # noqa: F401 - `server` is a fixture

PAIR = {"prompt": "What is 2 + 2?", "chosen": "It is 4.", "rejected": "No idea."}


def _upload(page, name: str, n: int) -> None:
    page.get_by_text("upload a .jsonl", exact=True).click()
    body = "".join(json.dumps({**PAIR, "prompt": f"{PAIR['prompt']} ({i})"}) + "\n" for i in range(n)).encode()
    page.locator('input[type="file"]').set_input_files(files=[{"name": name, "mimeType": "application/json", "buffer": body}])


def _heatmap_drawn(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.data && d.data[0].type === 'heatmap')")


def test_two_sessions_keep_their_own_uploads_and_weights(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        a, b = (browser.new_context(viewport={"width": 1280, "height": 800}).new_page() for _ in range(2))
        for page in (a, b):
            page.set_default_timeout(120_000)
            _open(page, server, "preference")
        _upload(a, "three.jsonl", 3)
        _upload(b, "five.jsonl", 5)  # both uploads in flight together
        a.get_by_text("'three.jsonl': 3 pairs.").wait_for()
        b.get_by_text("'five.jsonl': 5 pairs.").wait_for()
        a.reload()  # a rerun of one session never shows the other's file
        _open(a, server, "preference")
        assert a.get_by_text("five.jsonl").count() == 0 and b.get_by_text("three.jsonl").count() == 0

        for page in (a, b):
            _open(page, server, "explorer")
            _heatmap_drawn(page)
        before_a, before_b = _heatmap_total(a), _heatmap_total(b)
        assert before_a == before_b
        slider = a.get_by_role("slider").first
        slider.focus()
        for _ in range(5):
            a.keyboard.press("ArrowLeft")  # session a: weight 1.0 -> 0.5
        a.wait_for_function(
            "(before) => { const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data[0].type === 'heatmap');"
            " const z = g && g.data[0].z; return z && JSON.stringify(z[z.length - 1]) !== JSON.stringify(before); }",
            arg=before_a)
        b.reload()
        _open(b, server, "explorer")
        _heatmap_drawn(b)
        assert _heatmap_total(b) == before_b and _heatmap_total(a) != before_a
        for page in (a, b):
            assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
