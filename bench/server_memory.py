"""Benchmark: the app server's resident memory (RSS) over many explorer scorings and several short trainings.

What it does: starts the real server (``streamlit run workbench/app.py``, headless, on
127.0.0.1 and a free port, reading the committed ``.streamlit/config.toml``) with a fresh
run store and a reward-model store holding one (untrained) holistic reward model built on
the sidebar model, then drives it with Debian's Chromium through Playwright, as a user
would:
  1. the token reward explorer: its default demo pair (the warm-up: tokenizer, the
     profanity-check toxicity rewards, the stored reward model and its redistributed form
     are loaded and cached), then ``--scorings`` new responses typed in "Type your own"
     (each one different in length and words, some profane; each is scored by every
     component), moving one weight slider after each (the heatmap's total is recomputed);
  2. the reward-weight lab: ``--trainings`` short PPO runs started with "Run short PPO"
     (β changed between them), each followed live to "finished"; the trainings run in
     their own processes (``workbench.jobs``), so their memory is reported separately;
  3. the training curves page (the newest run) and its rollout browser.
A sampler thread reads the server's RSS (``/proc/PID/status``, VmRSS) and the summed RSS
of its child processes (psutil) every 0.2 s. It prints one row per milestone (server RSS
now, server peak so far, children's peak during the phase) and the bound: the server's
peak, and its growth after the warm-up.

What it leaves out: several browser sessions at once (tests/test_browser_sessions.py
checks they stay apart), GPU memory, the Feedback studio and the preference page.
The trainings use the tiny random Llama by default (``--train-model``): the server only
reads their run folders, whose size depends on the number of prompts and tokens (the
lab's own settings, ``core.trainers.ppo.short_ppo_config``), not on the model.

    PYTHONPATH=. .venv/bin/python bench/server_memory.py                       # 50 scorings, 5 trainings
    PYTHONPATH=. .venv/bin/python bench/server_memory.py --model tiny-random-llama --scorings 10 --trainings 1
    PYTHONPATH=. .venv/bin/python bench/server_memory.py --json out.json       # keep every sample

Needs /usr/bin/chromium and the ``playwright`` package (never runs ``playwright install``).
Results are recorded in docs/benchmarks.md (## Server memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MB = 1024 * 1024
SENTENCES = [
    "It was a fine day by the sea.", "We walked to the old lighthouse and back.", "The damn bus was late again.",
    "My neighbour is an idiot who never listens.", "The soup tasted of thyme and lemon.",
    "Nobody expected the meeting to run that long.", "What a stupid, stupid idea that was.",
    "The children built a castle of wet sand.", "I think the plan will work if we start early.",
    "Shut up and get out of my kitchen.", "Rain fell softly on the tin roof all night.",
]


# ----------------------------------------------------------------------------- memory sampling


def rss(pid: int) -> int:
    """Resident set size of one process in bytes (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Samples the server's RSS and its children's summed RSS every ``every`` seconds; peaks per phase."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int]] = []  # (time, server bytes, children bytes)
        self.peak = 0
        self.phase_child_peak = 0
        self.stop_event = threading.Event()
        self.t0 = time.time()

    def children_rss(self) -> int:
        import psutil

        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return 0
        return sum(rss(k.pid) for k in kids)

    def run(self) -> None:
        while not self.stop_event.is_set():
            server, kids = rss(self.pid), self.children_rss()
            self.samples.append((time.time() - self.t0, server, kids))
            self.peak = max(self.peak, server)
            self.phase_child_peak = max(self.phase_child_peak, kids)
            time.sleep(self.every)

    def start_phase(self) -> None:
        self.phase_child_peak = 0


# ----------------------------------------------------------------------------- the server


def reward_model_store(folder: Path, model: str) -> Path:
    """A reward-model store with one untrained holistic RM on ``model``: the explorer scores with it and its RED form."""
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.store import save_reward_model

    save_reward_model(load_reward_model(model, device="cpu"), load_tokenizer(model),
                      {"kind": "preference", "category": None, "level": "sequence"}, folder / "holistic-bench")
    return folder


def server_env(work: Path, model: str, train_model: str) -> dict:
    short = {"ppo": {"model_name_or_path": train_model}} if train_model else {}
    return dict(os.environ, RLHF_WORKBENCH_MODEL=model, RLHF_WORKBENCH_RUNS=str(work / "runs"),
                RLHF_WORKBENCH_REWARD_MODELS=str(work / "reward_models"), RLHF_WORKBENCH_SHORT=json.dumps(short),
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# ----------------------------------------------------------------------------- driving the pages


def settle(page) -> None:
    """Wait until the script run the last action started has finished."""
    page.wait_for_timeout(250)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)


def no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    if errors.count():
        raise RuntimeError(f"the page shows an error: {errors.all_inner_texts()}")


HEATMAP_X = """() => { const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data[0].type === 'heatmap');
                       return g ? g.data[0].x.length : null; }"""


def response_text(i: int) -> str:
    """The i-th typed response: 1-10 sentences (consecutive ones differ in length), some profane, and its number."""
    n = 1 + (i * 7) % 10
    return " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(n)) + f" That was note {i}."


def explorer(page, url: str, scorings: int, mark) -> None:
    page.goto(f"{url}/explorer")
    page.wait_for_selector("h1:has-text('Token reward explorer')")
    page.wait_for_function(f"() => ({HEATMAP_X})() !== null", timeout=300_000)  # the demo pair, scored
    settle(page)
    no_exception(page)
    mark("explorer: demo pair scored (warm-up)")
    page.get_by_text("Type your own", exact=True).click()
    response = page.get_by_label("Response")
    response.wait_for()
    settle(page)
    previous = page.evaluate(HEATMAP_X)
    sliders = page.get_by_role("slider")
    for i in range(scorings):
        response.fill(response_text(i))
        response.press("Control+Enter")
        page.wait_for_function(f"(prev) => {{ const n = ({HEATMAP_X})(); return n !== null && n !== prev; }}",
                               arg=previous, timeout=300_000)
        settle(page)
        previous = page.evaluate(HEATMAP_X)
        slider = sliders.nth(i % max(1, sliders.count()))  # a different weight each time
        slider.focus()
        page.keyboard.press("ArrowLeft" if (i // sliders.count()) % 2 == 0 else "ArrowRight")
        settle(page)
        no_exception(page)
        if (i + 1) % 10 == 0 or i + 1 == scorings:
            mark(f"explorer: {i + 1} scorings")


def trainings(page, url: str, n: int, mark, sampler: Sampler) -> None:
    page.goto(f"{url}/lab")
    page.wait_for_selector("h1:has-text('Reward-weight lab')")
    settle(page)
    for t in range(n):
        sampler.start_phase()
        beta = page.get_by_role("slider").last  # β: one step up for each run, so each run has its own label
        beta.focus()
        page.keyboard.press("ArrowRight")
        settle(page)
        label = page.get_by_label("Run name (optional)").get_attribute("placeholder")
        page.get_by_role("button", name="Run short PPO").click()
        ended = page.wait_for_function(  # the job's line (its progress text) says how it ended
            "(label) => { const t = document.body.innerText; return [\"' finished.\", \"' failed\"].map(e => "
            "t.includes(label + e) ? e : null).find(e => e) || null; }", arg=f"'{label}", timeout=1_800_000).json_value()
        if ended != "' finished.":
            raise RuntimeError(f"the short PPO '{label}' failed: see the run's train.log (--keep)")
        settle(page)
        no_exception(page)
        mark(f"lab: short PPO {t + 1} finished", children=True)


def curves(page, url: str, mark) -> None:
    page.goto(f"{url}/curves")
    page.wait_for_selector("h1:has-text('Training curves')")
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    settle(page)
    no_exception(page)
    mark("curves page: newest run and its rollouts drawn")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    from core.models import DEFAULT_MODEL, TINY_MODEL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the sidebar model (explorer tokenizer, stored RM's base)")
    parser.add_argument("--train-model", default=TINY_MODEL, help="model of the lab's short PPO runs ('' = the sidebar's)")
    parser.add_argument("--scorings", type=int, default=50)
    parser.add_argument("--trainings", type=int, default=5)
    parser.add_argument("--json", help="write every sample and milestone to this file")
    parser.add_argument("--keep", help="work in this folder and keep it (server.log, runs/) instead of a temporary one")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
        return 2
    from playwright.sync_api import sync_playwright

    from workbench.local_server import local_server

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="server-memory-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        reward_model_store(work / "reward_models", args.model)
        t0 = time.time()
        with local_server(server_env(work, args.model, args.train_model), work / "server.log", start_timeout=120,
                          stop_timeout=15) as server:
            proc, url = server.proc, server.url
            sampler = Sampler(proc.pid)
            sampler.start()
            time.sleep(1.0)

            def mark(event: str, children: bool = False) -> None:
                time.sleep(0.5)  # one more sample after the page settled
                row = {"event": event, "t": round(time.time() - t0, 1), "server_mb": rss(proc.pid) / MB,
                       "server_peak_mb": sampler.peak / MB,
                       "children_peak_mb": sampler.phase_child_peak / MB if children else None}
                rows.append(row)
                kids = f"{row['children_peak_mb']:>9.0f}" if children else f"{'':>9}"
                print(f"{row['t']:>7.1f} {row['server_mb']:>9.0f} {row['server_peak_mb']:>9.0f} {kids}  {event}", flush=True)

            print(f"server pid {proc.pid} on {url}; sidebar model {args.model}; trainings on "
                  f"{args.train_model or args.model}; load average {os.getloadavg()[0]:.1f}")
            print(f"{'t (s)':>7} {'RSS MB':>9} {'peak MB':>9} {'train MB':>9}  event (train MB: the training processes' peak)")
            mark("server started (no session yet)")
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                    page.set_default_timeout(300_000)
                    page.goto(url + "/")
                    page.wait_for_selector("h1:has-text('RLHF Workbench')")
                    settle(page)
                    mark("home page drawn")
                    explorer(page, url, args.scorings, mark)
                    trainings(page, url, args.trainings, mark, sampler)
                    if args.trainings:
                        curves(page, url, mark)
                    browser.close()
                time.sleep(3.0)
                mark("browser closed (session ended), 3 s later")
            finally:
                sampler.stop_event.set()
                sampler.join(5)
    warm = next(r for r in rows if "warm-up" in r["event"])
    after_scoring = [r for r in rows if r["event"].startswith("explorer:")][-1]
    kids = [r["children_peak_mb"] for r in rows if r["children_peak_mb"] is not None]
    print(f"\nserver peak RSS {sampler.peak / MB:.0f} MB; after the warm-up {warm['server_mb']:.0f} MB, after "
          f"{args.scorings} scorings {after_scoring['server_mb']:.0f} MB ({after_scoring['server_mb'] - warm['server_mb']:+.0f}), "
          f"at the end {rows[-1]['server_mb']:.0f} MB ({rows[-1]['server_mb'] - warm['server_mb']:+.0f} over the warm-up)"
          + (f"; training processes peaked at {max(kids):.0f} MB" if kids else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "milestones": rows, "samples": sampler.samples}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
