"""Shared UI pieces: the error guard every page runs in, run pickers, live curves, span highlighting.

What it is: small Streamlit functions the pages compose. ``page_guard`` turns any
exception into an ``st.error`` that says what to do (never a traceback on the page;
the traceback goes to the server log). ``live_curves`` draws metrics of several runs
on shared axes inside an ``st.fragment(run_every=...)`` that re-polls the run store
while a run is going and stops polling when every run has ended.

What it leaves out: figures themselves (``workbench.charts``), training (``workbench.jobs``).
"""

from __future__ import annotations

import contextlib
import html
import logging
from pathlib import Path

import streamlit as st

from workbench import charts

log = logging.getLogger("workbench")

POLL_SECONDS = 1.5


@contextlib.contextmanager
def page_guard(what: str = "this page"):
    """Run a page body; any exception becomes a clear message and the app keeps working."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Streamlit's rerun/stop exceptions are BaseException and pass
        log.exception("error on %s", what)
        st.error(f"Something went wrong on {what}: {friendly(exc)}")


def friendly(exc: BaseException) -> str:
    """One line for the user: the error's own message plus what to try."""
    from core.runstore import RunStoreError

    name = exc.__class__.__name__
    text = str(exc).strip() or name
    if isinstance(exc, RunStoreError) or isinstance(exc, FileNotFoundError):
        return f"{text}. Pick another run in the sidebar (the folder may have been deleted)."
    if isinstance(exc, ModuleNotFoundError):
        return f"{text}. A package is missing from the environment: run ./wb install."
    if "out of memory" in text.lower():
        return f"{text}. Use the tiny model or shorter texts."
    if name in ("ModelLoadError", "DataError", "TrainingError", "ValueError"):
        return text
    return f"{name}: {text}. Try again, or pick another model/run; details are in the server log."


# ----------------------------------------------------------------------------- runs


def run_label(run) -> str:
    try:
        meta = run.meta
    except Exception:  # noqa: BLE001 - a deleted or half-written folder
        return f"{run.path.name} (unreadable)"
    status = safe_status(run).get("status", "?")
    return f"{run.path.name} · {meta.get('kind', '?')} · {status}"


def safe_status(run) -> dict:
    """``run.status()``, or a placeholder while the folder is being created (config.json before status.json) or gone."""
    try:
        return run.status()
    except Exception:  # noqa: BLE001 - RunStoreError (no status.json yet, or deleted) or an unreadable file
        exists = (Path(run.path) / "config.json").is_file()
        return {"status": "starting" if exists else "deleted", "step": 0}


def label_for_path(path) -> str:
    from core.runstore import Run

    return run_label(Run(Path(path)))


def all_runs(kind: str | None = None) -> list:
    from core.runstore import list_runs

    return list_runs(kind=kind)


def open_run(path):
    """``Run.open`` that turns a deleted folder into a page message (returns None)."""
    from core.runstore import Run, RunStoreError

    try:
        return Run.open(path)
    except RunStoreError as exc:
        st.warning(f"{exc}. Pick another run.")
        return None


def run_is_live(run) -> bool:
    from workbench.jobs import registry

    status = safe_status(run).get("status")
    if status == "starting":
        return True
    if status != "running":
        return False
    job = registry().for_run(Path(run.path).resolve())
    if job is not None:
        return job.alive
    # "running" on disk with no job in this server: a trainer CLI may own it. Keep polling while its
    # process exists (a killed trainer leaves "running" behind; do not poll that forever).
    return _pid_alive(status_pid(run))


def status_pid(run) -> int | None:
    pid = safe_status(run).get("pid")
    return int(pid) if isinstance(pid, int) else None


def _pid_alive(pid: int | None) -> bool:
    import os

    if pid is None:
        return True  # unknown: assume it is going
    if pid == os.getpid():
        return False  # written by this server but no job owns it: a job of an earlier server life
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metric_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in ("step", "time") and k not in names:
                names.append(k)
    return names


def draw_curves(run_paths: list, metrics: list[str], columns: int = 2, key_prefix: str = "curves") -> bool:
    """Draw ``metrics`` for every run on shared axes; returns True while any run is still going."""
    from core.runstore import Run

    data, live = {}, False
    for p in run_paths:
        run = Run(Path(p))
        if not (run.path / "config.json").is_file():
            st.warning(f"Run folder {run.path} is gone (deleted or moved); it is left out of the charts.")
            continue
        data[run.path.name] = run.metrics()
        live = live or run_is_live(run)
    if not data:
        st.info("No runs to show yet.")
        return live
    shown = [m for m in metrics if any(charts.metric_series(rows, m) for rows in data.values())]
    if not shown:
        st.info("No metrics logged yet" + (" (the run is starting)" if live else "") + ".")
        return live
    cols = st.columns(columns)
    for i, metric in enumerate(shown):
        fig = charts.curves({label: charts.metric_series(rows, metric) for label, rows in data.items()}, metric)
        cols[i % columns].plotly_chart(fig, key=f"{key_prefix}_{metric}", width="stretch")
    return live


def live_curves(run_paths: list, metrics: list[str], key_prefix: str, live: bool) -> None:
    """``draw_curves`` inside a fragment that re-runs every POLL_SECONDS while ``live``."""

    @st.fragment(run_every=POLL_SECONDS if live else None)
    def _body():
        still_live = draw_curves(run_paths, metrics, key_prefix=key_prefix)
        if live and not still_live:
            st.rerun()  # the run ended: redraw the whole page once (status, samples), then stop polling

    _body()


# ----------------------------------------------------------------------------- text


SPAN_COLOURS = {
    "Irrelevant": "#fde68a", "Redundant": "#fbcfe8", "Incoherent": "#ddd6fe",
    "Wrong-Grounding": "#fecaca", "Unverifiable": "#fed7aa", "C1": "#fde68a", "C2": "#fecaca",
}


def highlighted(text: str, spans: list[dict]) -> str:
    """HTML of ``text`` with spans {start, end, label} highlighted and labelled (overlaps: first wins)."""
    spans = sorted((s for s in spans if 0 <= s["start"] < s["end"] <= len(text)), key=lambda s: s["start"])
    out, pos = [], 0
    for s in spans:
        if s["start"] < pos:
            continue
        out.append(html.escape(text[pos : s["start"]]))
        colour = SPAN_COLOURS.get(s["label"].split(" (")[0], "#e5e7eb")
        out.append(
            f'<mark style="background:{colour};padding:1px 2px;border-radius:3px" title="{html.escape(s.get("title", s["label"]))}">'
            f'{html.escape(text[s["start"]:s["end"]])}<sup style="font-size:0.65em"> {html.escape(s["label"])}</sup></mark>'
        )
        pos = s["end"]
    out.append(html.escape(text[pos:]))
    return '<div style="line-height:1.7;white-space:pre-wrap">' + "".join(out) + "</div>"


def start_job(kind: str, train_fn, config, label: str, jobs_key: str) -> None:
    """Start a training off the script thread, remember its id under ``jobs_key`` and rerun.

    Only one training runs at a time (the registry refuses a second one): that refusal
    is shown as a warning, not an error.
    """
    from workbench.jobs import registry

    try:
        job = registry().start(kind, train_fn, config, label=label)
    except RuntimeError as exc:
        st.warning(str(exc))
        return
    st.session_state.setdefault(jobs_key, []).append(job.id)
    st.rerun()
