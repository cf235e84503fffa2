"""Real-browser test of the workbench: Playwright drives Debian's Chromium against `streamlit run`.

Starts ``streamlit run workbench/app.py`` on 127.0.0.1 and a free port (tiny random model,
very short trainings, a fresh run store), then drives every page from its defaults to a
result: Home starts JupyterLab and its notebook link answers; the training curves page on the
empty store says how to start a run; the token reward explorer draws its heatmap and a weight
slider changes it, and on a fresh install (an empty user cache) it offers and draws the shipped
reward models; the reward-weight lab's short PPO finishes with its held-out toxicity and
perplexity drawn; the curves page then shows that run and its rollouts; the preference page's
DPO finishes on its defaults, then SimPO on a 1-pair upload; a 20,000-character response gets
its message. It saves a 1280×800 screenshot of every page under docs/screenshots/.

Never runs ``playwright install``: it needs /usr/bin/chromium (``apt-get install -y chromium``)
and skips with that reason when it is missing.

    .venv/bin/python -m pytest tests/test_browser.py -q
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHORT = {
    # the lab's own held-out evaluation is kept (2 demo prompts, before and after): its charts draw it
    "ppo": {"num_iterations": 2, "num_prompts": 2, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 8,
            "eval_samples_k": 1, "ppo_epochs": 1, "save_every": 0, "prompts": "demo"},
    # no train_size / eval_size: the preference page sizes its split to the data, as for a user
    "preference": {"num_steps": 2, "batch_size": 2, "max_length": 96,
                   "max_prompt_length": 48, "gradient_accumulation_steps": 1, "eval_every": 1, "save_every": 100},
}

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (as root: apt-get install -y chromium); "
                "the tests never run `playwright install`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def _tiny_reward_model_store(folder: Path, tiny_model_path) -> Path:
    """A reward-model store holding one (untrained) tiny preference RM: fast, and independent of the user's cache."""
    try:
        from core.rewards.store import save_reward_model
    except ImportError:
        return folder
    from core.models import load_reward_model, load_tokenizer

    save_reward_model(load_reward_model(str(tiny_model_path), device="cpu"), load_tokenizer(str(tiny_model_path)),
                      {"kind": "preference", "category": None, "level": "sequence"}, folder / "tiny-hh")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path):
    store = _tiny_reward_model_store(tmp_path_factory.mktemp("reward_models"), tiny_model_path)
    yield from _streamlit(tmp_path_factory, RLHF_WORKBENCH_REWARD_MODELS=str(store))


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, tiny_model_path):
    """A fresh install: an empty user cache (its converted models linked in), so the explorer offers the shipped models."""
    from core.paths import cache_dir

    cache = tmp_path_factory.mktemp("fresh_cache")
    (cache / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "RLHF_WORKBENCH_REWARD_MODELS"}
    yield from _streamlit(tmp_path_factory, base=env, RLHF_WORKBENCH_CACHE=str(cache))


def _streamlit(tmp_path_factory, base: dict | None = None, cwd: Path = ROOT, address: str | None = "127.0.0.1", **extra):
    """Run ``streamlit run workbench/app.py`` (tiny model, short trainings, a fresh run store); yields its URL.

    ``cwd``: the folder it is started from (the project root reads .streamlit/config.toml); ``address``: the
    ``--server.address`` flag (None: no flag, Streamlit's default of every interface unless the config says otherwise)."""
    from workbench.local_server import local_server

    env = dict(base if base is not None else os.environ, RLHF_WORKBENCH_MODEL="tiny-random-llama", RLHF_WORKBENCH_SHORT=json.dumps(SHORT),
               RLHF_WORKBENCH_RUNS=str(tmp_path_factory.mktemp("browser_runs")), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    with local_server(env, tmp_path_factory.mktemp("streamlit") / "server.log", cwd=cwd, address=address) as server:
        yield server.url


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(120_000)  # generous: the CI machine may be busy
        yield pg
        browser.close()


TITLES = {"home": "RLHF Workbench", "explorer": "Token reward explorer", "curves": "Training curves",
          "lab": "Reward-weight lab", "preference": "Preference optimisation"}


def _open(page, server: str, path: str) -> None:
    """Load a page and wait until its script run has finished (title drawn, no 'running' status widget)."""
    page.goto(f"{server}/{'' if path == 'home' else path}")  # the default page lives at the root URL
    page.wait_for_selector(f"h1:has-text('{TITLES[path]}')")
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")


def _choose(page, label: str, option, attempts: int = 5) -> None:
    """Open the select box labelled ``label`` and click ``option`` (a locator). On a busy machine a rerun that was
    still drawing can close the list as it opens: then the list is closed and opened again."""
    for attempt in range(attempts):
        page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
        page.locator('[data-testid="stSelectbox"]').filter(has_text=label).click()
        try:
            option.click(timeout=10_000)
            return
        except sync_api.TimeoutError:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _heatmap_total(page) -> list:
    """z values of the last heatmap row (the weighted total) read from the plotly graph in the page."""
    return page.evaluate("""() => {
        const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data[0].type === 'heatmap');
        if (!g) return null;
        const z = g.data[0].z; return z[z.length - 1];
    }""")


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def _no_error(page) -> None:
    """Neither an exception nor an error message (st.error) on the page: what a page's defaults must give."""
    _no_exception(page)
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()


def _plot_points(page, title: str) -> int:
    """Number of points of the first trace of the chart titled ``title`` (0 if there is none yet)."""
    return page.evaluate("""(title) => {  // the theme wraps titles in <b>...</b>
        const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.layout && d.layout.title &&
            (d.layout.title.text || '').replace(/<[^>]*>/g, '') === title && d.data && d.data.length);
        return g ? g.data[0].x.length : 0; }""", title)


def test_home_starts_jupyterlab_and_its_notebook_link_answers(page, server):
    _open(page, server, "home")
    _no_error(page)
    page.get_by_text("./wb python -m jupyter lab notebooks/").first.wait_for()  # the command by hand
    page.get_by_role("button", name="Start JupyterLab").click()
    link = page.locator("a[href*='/lab/tree/'][href*='.ipynb?token=']").first
    link.wait_for(timeout=30_000)
    href = link.get_attribute("href")
    assert re.match(r"http://127\.0\.0\.1:\d+/lab/tree/\S+\.ipynb\?token=[0-9a-f]{32}$", href), href
    deadline, status = time.time() + 120, None
    while time.time() < deadline:  # JupyterLab takes a few seconds to start
        try:
            status = urllib.request.urlopen(href, timeout=5).status
            break
        except OSError:
            time.sleep(1)
    assert status == 200, f"the notebook link {href} did not answer"
    _no_error(page)


def test_curves_on_a_fresh_run_store_say_how_to_start_a_run(page, server):
    _open(page, server, "curves")
    page.get_by_text("No runs yet.").wait_for()
    _no_error(page)


def test_explorer_slider_changes_heatmap(page, server):
    _open(page, server, "explorer")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.data && d.data[0].type === 'heatmap')")
    before = _heatmap_total(page)
    assert before and any(v for v in before if v is not None)
    _no_error(page)
    _shot(page, "explorer")
    slider = page.get_by_role("slider").first  # the first weight slider: w · toxicity
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")  # 1.0 -> 0.5
    page.wait_for_function(
        "(before) => { const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data[0].type === 'heatmap');"
        " const z = g && g.data[0].z; return z && JSON.stringify(z[z.length - 1]) !== JSON.stringify(before); }",
        arg=before)
    after = _heatmap_total(page)
    assert after != before


SHIPPED_ROWS = ["toxicity", "toxicity_sentence", "toxicity_token", "hh_holistic", "hh_holistic_redistributed", "finegrained_c1", "finegrained_c2",
                "preference_c3", "preference_c3_redistributed"]


def test_explorer_on_a_fresh_install_offers_and_draws_the_shipped_models(page, fresh_server):
    """No training step: the heatmap has a row for holistic HH, C1, C2, C3, the RED view of HH and C3 and
    toxicity, and the text coloured by the HH model's RED row shows the demo answer's tokens in colour."""
    start = time.time()
    _open(page, fresh_server, "explorer")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.data && d.data[0].type === 'heatmap')")
    rows = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data[0].type === 'heatmap').data[0].y")
    assert sorted(rows) == sorted(SHIPPED_ROWS + ["total (weighted)"]), rows
    _no_error(page)
    page.get_by_text("Colour the text by").wait_for()
    _choose(page, "Colour the text by", page.get_by_role("option", name="hh_holistic_redistributed", exact=True))
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.get_by_text("hh_holistic_redistributed: blue > 0 > red").wait_for()
    coloured = page.locator("div[style*='pre-wrap'] span[style*='rgba']")
    assert coloured.count() > 5  # RED spreads the holistic score over the demo answer's tokens
    assert re.fullmatch(r"-?[0-9.e-]+", coloured.first.get_attribute("title").split(" · ")[0])
    assert page.locator("span[data-span^='Irrelevant (C1)']").count() > 5  # the demo answer's human span, on its tokens
    _no_error(page)
    print(f"fresh-install explorer: shipped models scored and drawn in {time.time() - start:.1f} s")


def test_lab_short_ppo_curve_appears(page, server):
    _open(page, server, "lab")
    page.get_by_role("button", name="Run short PPO").click()
    # the live fragment draws objective/scores once the run logged its first iteration
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.layout && d.layout.title &&"
        " (d.layout.title.text || '').includes('objective/scores') && d.data.length && d.data[0].x.length > 0)",
        timeout=120_000)
    page.wait_for_selector("text=finished", timeout=120_000)
    _open(page, server, "lab")
    page.wait_for_selector(".js-plotly-plot")
    # held-out toxicity and perplexity before the first and after the last iteration
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.layout && d.layout.title"
                           " && (d.layout.title.text || '').includes('eval/perplexity'))", timeout=30_000)
    assert _plot_points(page, "eval/toxicity") == 2 and _plot_points(page, "eval/perplexity") == 2
    page.get_by_text("Step 1 → step 2").wait_for()  # before / after samples
    _no_error(page)
    _shot(page, "lab")


def test_curves_show_the_lab_run_and_its_rollouts(page, server):
    _open(page, server, "curves")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.data && d.data.length"
                           " && d.data[0].type === 'heatmap')", timeout=30_000)  # the rollout browser's token heatmap
    assert _plot_points(page, "objective/scores") == 2 and _plot_points(page, "eval/toxicity") == 2
    _no_error(page)


def _dataframe_rows(page, index: int = 0) -> list[list[str]]:
    """Cell texts of an st.dataframe, read from the grid's accessibility table (the cells themselves are on a canvas)."""
    return page.evaluate("""(i) => {
        const t = document.querySelectorAll('[data-testid="stDataFrame"]')[i].querySelector('table[role="grid"]');
        return [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()));
    }""", index)


def test_lab_preset_run_ends_with_the_paired_table(page, server):
    """A preset sets the sliders and β; its short PPO (tiny model, the test's short settings on top) ends with the
    paired before/after table of the held-out prompts: the weighted component, KL and length, and the verdict."""
    _open(page, server, "lab")
    _choose(page, "Preset", page.get_by_role("option", name=re.compile(r"^detox")))
    page.get_by_text("Expected: toxicity_token").wait_for()
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.get_by_role("button", name="Run short PPO").click()
    finished = page.get_by_text(re.compile(r"^'lab detox toxicity_token=1 β=[0-9.]+' finished\.$"))
    finished.wait_for(timeout=300_000)
    assert finished.inner_text() == "'lab detox toxicity_token=1 β=0.02' finished.", finished.inner_text()  # the preset's β
    _open(page, server, "lab")  # the newest run is the paired panel's default
    page.get_by_text("Held-out before / after, paired by prompt").wait_for(timeout=30_000)
    sentence = page.get_by_text(re.compile(r"^On \d+ held-out prompts, "))
    sentence.wait_for(timeout=30_000)
    assert re.search(r"noise", sentence.inner_text())
    page.wait_for_function("() => { const t = document.querySelector('[data-testid=\"stDataFrame\"] table[role=\"grid\"]');"
                           " return t && t.querySelectorAll('tbody tr').length >= 3; }", timeout=30_000)
    rows = _dataframe_rows(page)
    metrics = [r[0] for r in rows if r]
    assert metrics == ["toxicity_token", "kl", "length"], rows
    assert all(r[-2] in ("yes", "no") for r in rows) and float(rows[1][1]) == 0.0  # KL before training is 0
    _no_error(page)


def test_screenshots_of_every_page(page, server):
    for path, name in (("home", "home"), ("curves", "curves"), ("preference", "preference")):
        _open(page, server, path)
        if name == "curves":
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
        if name == "preference":  # the implicit-reward vs length scatter of held-out demo pairs
            page.get_by_role("button", name="Compute implicit rewards").click()
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()
        _shot(page, name)
        assert page.locator('[data-testid="stException"]').count() == 0
    for name in ("home", "explorer", "curves", "lab", "preference"):
        assert (SHOTS / f"{name}.png").is_file()


def test_preference_dpo_on_defaults_then_a_one_pair_simpo(page, server):
    """The page's own defaults (demo set, DPO) train; then SimPO on an uploaded file with a single pair."""
    _open(page, server, "preference")
    page.get_by_role("button", name="Run short DPO").click()
    page.get_by_text("'DPO β=0.1' finished.").wait_for(timeout=180_000)
    assert page.get_by_text("'DPO β=0.1' failed").count() == 0
    _no_error(page)
    page.get_by_text("upload a .jsonl", exact=True).click()
    pair = {"prompt": "What is 2 + 2?", "chosen": "It is 4.", "rejected": "No idea."}
    page.locator('input[type="file"]').set_input_files(
        files=[{"name": "one.jsonl", "mimeType": "application/json", "buffer": (json.dumps(pair) + "\n").encode()}])
    page.get_by_text("'one.jsonl': 1 pairs.").wait_for(timeout=30_000)
    page.get_by_text("SimPO", exact=True).click()
    page.get_by_role("button", name="Run short SimPO").click()
    page.get_by_text("'SimPO β=2' finished.").wait_for(timeout=180_000)
    _no_error(page)


def test_explorer_long_texts(page, server):
    """A 20,000-character response gets the message at once; a ~900-token one is drawn (timed)."""
    _open(page, server, "explorer")
    page.get_by_text("Type your own", exact=True).click()
    response = page.get_by_label("Response")
    response.wait_for()
    start = time.time()
    response.fill(("This is a long sentence about nothing. " * 520)[:20_000])
    response.press("Control+Enter")
    page.get_by_text("the explorer handles at most 6,000").wait_for(timeout=30_000)
    print(f"20,000-character response: message after {time.time() - start:.1f} s")
    _no_exception(page)
    start = time.time()
    response.fill("It is a fine day. " * 150)  # ~900 tokens: within the tiny model's 1,024
    response.press("Control+Enter")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(d => d.data && d.data[0].type === 'heatmap'"
                           " && d.data[0].x.length > 800)", timeout=120_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    print(f"~900-token response: scored and drawn after {time.time() - start:.1f} s")
    _no_exception(page)


def test_a_server_started_elsewhere_listens_everywhere_and_serves_only_a_warning(tmp_path_factory, page):
    """Started from another folder, Streamlit does not read the project's .streamlit/config.toml and listens on every
    interface: the app then serves nothing but a message saying how to start it locally."""
    env = {k: v for k, v in os.environ.items() if k != "RLHF_WORKBENCH_ALLOW_REMOTE"}
    gen = _streamlit(tmp_path_factory, base=env, cwd=tmp_path_factory.mktemp("elsewhere"), address=None)
    url = next(gen)
    try:
        page.goto(url)
        page.wait_for_selector("text=This server listens on every network interface")
        assert page.locator("h1:has-text('RLHF Workbench')").count() == 0  # no page was drawn
        assert "--server.address 127.0.0.1" in page.inner_text("body")
    finally:
        gen.close()
