"""Shared UI pieces: the error guard every page runs in, run pickers, live curves, span highlighting.

What it is: small Streamlit functions the pages compose. ``page_guard`` turns any
exception into an ``st.error`` that says what to do (never a traceback on the page;
the traceback goes to the server log). ``live_curves`` draws metrics of several runs
on shared axes inside an ``st.fragment(run_every=...)`` that re-polls the run store
while a run is going and stops polling when every run has ended; ``job_status`` is
the progress line of a job started from the app, with its Stop / Resume buttons;
``resume_panel`` offers Resume for an interrupted or stopped run no job of this server
trains (its process died, or an earlier server started it).

What it leaves out: figures themselves (``workbench.charts``), training (``workbench.jobs``).
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import time
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


SHOW_HIDDEN_KEY = "frame_show_hidden"
"""session key of the sidebar's "show failed/empty runs" checkbox, read by every run picker"""

_KIND_NAMES = {"ppo": "PPO", "dpo": "DPO", "simpo": "SimPO", "sft": "SFT", "reward": "RM", "rm": "RM"}
_AUTO_NAME = re.compile(r"^(lab|ppo|dpo|simpo|sft|reward|rm)([-=_ ].*)?$", re.IGNORECASE)


def _num(v) -> str:
    """A setting as text: 0.05 -> '0.05', 2.0 -> '2' (never a sign the value does not have)."""
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def run_settings(kind: str, config: dict) -> str:
    """The settings a run is told apart by: β and weights (PPO), β and ε or γ/β (DPO, SimPO)."""
    parts = []
    if kind == "ppo":
        weights = str(config.get("weights") or "").replace(",", " ").replace("=", "×").strip()
        parts.append(weights or str(config.get("rewards") or ""))
        if "kl_coef" in config:
            parts.append(f"β={_num(config['kl_coef'])}")
    elif kind in ("dpo", "simpo"):
        if config.get("loss_type") not in (None, "dpo"):
            parts.append(str(config["loss_type"]).upper())
        if "beta" in config:
            parts.append(f"β={_num(config['beta'])}")
        if kind == "dpo" and config.get("label_smoothing"):
            parts.append(f"ε={_num(config['label_smoothing'])}")
        if kind == "simpo" and "gamma_beta_ratio" in config:
            parts.append(f"γ/β={_num(config['gamma_beta_ratio'])}")
    return " ".join(p for p in parts if p)


def run_name(meta: dict) -> str:
    """The name a user gave the run, or '' for names the app or a trainer made up (settings and a job id)."""
    name = re.sub(r"-[0-9a-f]{8}$", "", str(meta.get("name") or ""))
    return "" if not name or _AUTO_NAME.match(name) else name


def run_label(run, status: bool = True) -> str:
    """'PPO toxicity×1 β=0.05 · 12:03 · finished': kind, key settings, start time (the user's name first, if any)."""
    try:
        meta = run.meta
    except Exception:  # noqa: BLE001 - a deleted or half-written folder
        return f"{run.path.name} (unreadable)"
    kind = str(meta.get("kind", "?"))
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    head = " ".join(p for p in (_KIND_NAMES.get(kind, kind), run_settings(kind, config)) if p)
    name = run_name(meta)
    created = meta.get("created")
    when = ""
    if isinstance(created, (int, float)):
        same_day = time.strftime("%Y%m%d", time.localtime(created)) == time.strftime("%Y%m%d")
        when = time.strftime("%H:%M:%S" if same_day else "%d %b %H:%M", time.localtime(created))
    parts = [f"{name} ({head})" if name else head, when]
    if status:
        parts.append(str(safe_status(run).get("status", "?")))
    return " · ".join(p for p in parts if p)


def safe_status(run) -> dict:
    """``run.effective_status()`` ("interrupted" for a "running" run whose process died), or a placeholder while the
    folder is being created (``Run.create`` writes status.json first, so this is a folder still being written by
    hand or an old run store) or gone."""
    try:
        return run.effective_status()
    except Exception:  # noqa: BLE001 - RunStoreError (no status.json yet, or deleted) or an unreadable file
        exists = (Path(run.path) / "config.json").is_file()
        return {"status": "starting" if exists else "deleted", "step": 0}


def picker_label(run) -> str:
    """A picker's label for a run: stable while the run goes on (a widget matches a choice by its label, so a label
    that changed from "running" to "stopped" would lose the selection); only a failed run says so."""
    label = run_label(run, status=False)
    return f"{label} · failed" if safe_status(run).get("status") == "failed" else label


def label_for_path(path) -> str:
    from core.runstore import Run

    return picker_label(Run(Path(path)))


def is_hidden(run) -> bool:
    """Failed runs, and runs that ended (or died) without logging a metric: kept out of pickers unless asked for."""
    status = safe_status(run).get("status")
    if status in ("failed", "deleted"):
        return True
    metrics = Path(run.path) / "metrics.jsonl"
    empty = not metrics.is_file() or metrics.stat().st_size == 0
    return empty and not run_is_live(run)


def all_runs(kind: str | None = None, show_hidden: bool | None = None) -> list:
    """Runs in the store, newest first; failed and empty ones only when ``show_hidden`` (default: the sidebar's checkbox)."""
    from core.runstore import list_runs

    if show_hidden is None:
        show_hidden = bool(st.session_state.get(SHOW_HIDDEN_KEY, False))
    runs = list_runs(kind=kind)
    return runs if show_hidden else [r for r in runs if not is_hidden(r)]


def hidden_note(kind: str | None = None) -> str:
    """' (2 failed or empty runs hidden: ...)' when the pickers leave runs out, else ''."""
    from core.runstore import list_runs

    if st.session_state.get(SHOW_HIDDEN_KEY):
        return ""
    n = sum(1 for r in list_runs(kind=kind) if is_hidden(r))
    return f" ({n} failed or empty run{'s' if n > 1 else ''} hidden: tick 'show failed/empty runs' in the sidebar)" if n else ""


def run_colours(run_paths) -> dict[str, str]:
    """Run folder name -> colour, the same on every chart and page: runs are numbered by age in the store."""
    from core.paths import runs_dir

    names = [Path(p).name for p in run_paths]
    root = Path(run_paths[0]).parent if run_paths else runs_dir()
    try:
        every = sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError:
        every = []
    order = {n: i for i, n in enumerate(every)}
    return {n: charts.PALETTE[order.get(n, len(every) + i) % len(charts.PALETTE)] for i, n in enumerate(names)}


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

    from core.runstore import pid_alive

    if pid is None:
        return True  # unknown: assume it is going
    if pid == os.getpid():
        return False  # written by this server but no job owns it: a job of an earlier server life
    return pid_alive(pid)


def metric_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in ("step", "time") and k not in names:
                names.append(k)
    return names


def colour_key(labels: dict[str, str], colours: dict[str, str]) -> str:
    """HTML: one coloured line and label per run (the key shared by the charts below it)."""
    items = [f'<span style="white-space:nowrap;margin-right:1.2em"><span style="display:inline-block;width:1.6em;height:0.35em;'
             f'vertical-align:middle;background:{colours.get(k, "#888")}"></span> {html.escape(v)}</span>' for k, v in labels.items()]
    return '<div style="font-size:0.85em;line-height:1.8">' + " ".join(items) + "</div>"


def draw_curves(run_paths: list, metrics: list[str], columns: int = 2, key_prefix: str = "curves") -> bool:
    """Draw ``metrics`` for every run on shared axes; returns True while any run is still going.

    Each run keeps one colour on every chart (``run_colours``), named once in a key above
    the charts; DPO and SimPO runs get separate y axes where their scales differ.
    """
    from core.runstore import Run

    data, labels, kinds, live = {}, {}, {}, False
    for p in run_paths:
        run = Run(Path(p))
        if not (run.path / "config.json").is_file():
            st.warning(f"Run folder {run.path} is gone (deleted or moved); it is left out of the charts.")
            continue
        data[run.path.name] = run.metrics()
        labels[run.path.name] = run_label(run, status=False)
        try:
            kind = str(run.meta.get("kind", ""))
        except Exception:  # noqa: BLE001 - config.json half-written
            kind = ""
        kinds[run.path.name] = _KIND_NAMES.get(kind, kind)
        live = live or run_is_live(run)
    if not data:
        st.info("No runs to show yet.")
        return live
    shown = [m for m in metrics if any(charts.metric_series(rows, m) for rows in data.values())]
    if not shown:
        st.info("No metrics logged yet" + (" (the run is starting)" if live else "") + ".")
        return live
    missing = [m for m in metrics if m not in shown]
    if missing and not live:  # say so, rather than leave a chart out silently
        st.caption(f"Not logged by {'this run' if len(data) == 1 else 'these runs'}: {', '.join(missing)}.")
    colours = run_colours([Path(p) for p in run_paths if Path(p).name in data])
    if len(data) > 1:
        st.markdown(colour_key(labels, colours), unsafe_allow_html=True)
    cols = st.columns(columns)
    for i, metric in enumerate(shown):
        fig = charts.curves({k: charts.metric_series(rows, metric) for k, rows in data.items()}, metric,
                            names=labels, colours=colours, groups=kinds, legend=False)
        cols[i % columns].plotly_chart(fig, key=f"{key_prefix}_{metric}", width="stretch")
    return live


def live_curves(run_paths: list, metrics: list[str], key_prefix: str, live: bool, columns: int = 2, header=None) -> None:
    """``draw_curves`` inside a fragment that re-runs every POLL_SECONDS while ``live``.

    header: an optional function drawn above the charts on every poll (e.g. ``job_status``).
    """

    @st.fragment(run_every=POLL_SECONDS if live else None)
    def _body():
        if header is not None:
            header()
        still_live = draw_curves(run_paths, metrics, columns=columns, key_prefix=key_prefix)
        if live and not still_live:
            st.rerun()  # the run ended: redraw the whole page once (status, samples), then stop polling

    _body()


# ----------------------------------------------------------------------------- jobs


def job_status(job, key_prefix: str, jobs_key: str) -> None:
    """Progress of a job started from the app, with Stop (while it runs) and Resume (once stopped) buttons.

    jobs_key: the session list of the page's job ids, where a resumed job is added.
    """
    import time

    from workbench.jobs import registry

    total, done = job.total_steps, job.last_step or 0
    state = job.state
    if state in ("running", "stopping"):
        cols = st.columns([5, 1], vertical_alignment="center")
        frac = min(done / total, 1.0) if total else 0.0
        what = "stopping after this step…" if state == "stopping" else "running in its own process; switching pages or tabs is safe"
        cols[0].progress(frac, text=f"'{job.label}': step {done}/{total or '?'} after {time.time() - job.started:.0f} s ({what})")
        phase = job.phase if state == "running" else None
        if phase is not None:  # a long phase between steps: loading, reference pass, feature extraction, evaluation
            name, phase_done, phase_total = phase
            if phase_total:
                cols[0].progress(min(phase_done or 0, phase_total) / phase_total, text=f"{name} {phase_done or 0}/{phase_total}")
            else:
                cols[0].caption(f"{name}…")
        if cols[1].button("Stop", key=f"{key_prefix}_stop_{job.id}", disabled=state == "stopping", width="stretch",
                          help="Stop after the current step; a checkpoint is saved and the run can be resumed."):
            registry().stop(job)  # the next poll shows "stopping…", then the stopped run
    elif state == "failed":
        st.error(f"'{job.label}' failed: {job.error}")
    elif state == "interrupted":
        interrupted_notice(job.label, job._status(), f"{key_prefix}_resume_{job.id}", lambda: registry().resume(job), jobs_key)
    elif state == "stopped":
        cols = st.columns([5, 1], vertical_alignment="center")
        cols[0].info(f"'{job.label}' stopped at step {done}; its checkpoint is kept.")
        if cols[1].button("Resume", key=f"{key_prefix}_resume_{job.id}", width="stretch",
                          disabled=registry().running() is not None, help="Continue from the checkpoint, in the same run folder."):
            start_job(lambda: registry().resume(job), jobs_key)
    else:
        st.progress(1.0, text=f"'{job.label}' finished.")


def interrupted_notice(label: str, status: dict, key: str, resume, jobs_key: str, where=st) -> None:
    """'LABEL was interrupted at step N ...' with a Resume button (when a checkpoint exists): the run's process
    died (SIGKILL, out of memory, the server that started it ended); ``resume()`` returns the new Job."""
    from workbench.jobs import registry

    ckpt = status.get("resumable_from")
    what = "stopped" if status.get("status") == "stopped" else "interrupted"
    text = (f"'{label}' was {what} at step {status.get('step', '?')}"
            + ("; its process ended without finishing it" if what == "interrupted" else "")
            + (f". It can resume from its checkpoint of step {ckpt}." if ckpt is not None else ": it has no checkpoint to resume from."))
    cols = where.columns([5, 1], vertical_alignment="center") if where is st else [where, where]  # the sidebar: stacked
    cols[0].warning(text) if what == "interrupted" else cols[0].info(text)
    if ckpt is not None and cols[1].button("Resume", key=key, width="stretch", disabled=registry().running() is not None,
                                           help="Continue from the newest intact checkpoint, in the same run folder "
                                                "(refused while another process trains it)."):
        start_job(resume, jobs_key)


def resumable(run, states=("interrupted", "stopped")) -> dict | None:
    """The effective status of a run in ``states`` that no live job of this server trains (interrupted: its
    process died; stopped: on request, perhaps by an earlier server), else None."""
    from workbench.jobs import registry

    status = safe_status(run)
    if status.get("status") not in states:
        return None
    job = registry().for_run(Path(run.path).resolve())
    if job is not None and job.alive:
        return None  # being resumed right now
    if "resumable_from" not in status:
        latest = run.latest_checkpoint()
        status = {**status, "resumable_from": latest[0] if latest else None}
    return status


def resume_panel(run, key_prefix: str, jobs_key: str, where=st, states=("interrupted", "stopped")) -> None:
    """For a run ``resumable`` finds: what happened, and a Resume button (``JobRegistry.resume_run``)."""
    from workbench.jobs import registry

    status = resumable(run, states)
    if status is not None:
        interrupted_notice(run_label(run, status=False), status, f"{key_prefix}_{run.path.name}",
                           lambda: registry().resume_run(run.path), jobs_key, where=where)


# ----------------------------------------------------------------------------- text


SPAN_COLOURS = {
    "Irrelevant": "#fde68a", "Redundant": "#fbcfe8", "Incoherent": "#ddd6fe",
    "Wrong-Grounding": "#fecaca", "Unverifiable": "#fed7aa", "C1": "#fde68a", "C2": "#fecaca",
}


SPAN_LINE_COLOURS = {
    "Irrelevant": "#d97706", "Redundant": "#db2777", "Incoherent": "#7c3aed",
    "Wrong-Grounding": "#dc2626", "Unverifiable": "#ea580c", "C1": "#d97706", "C2": "#dc2626",
}


def span_category(label: str) -> str:
    """'Irrelevant (C1)' -> 'Irrelevant': the key of the span colours."""
    return label.split(" (")[0]


def span_marks(token_spans: list[tuple[int, int]], spans: list[dict]) -> list[list[tuple[str, str]]]:
    """Per token, (line colour, hover label) of each human span {start, end, label, title} sharing a character with it.

    token_spans: the (start, end) character span of each response token in the text the spans index
    (``TokenRewards.token_spans``), so the marks sit on the same tokens as the reward colours.
    """
    out = []
    for a, b in token_spans:
        here = []
        for s in spans:
            if s["start"] < b and a < s["end"]:  # at least one shared character
                title = s.get("title") or ""
                label = s["label"] + (f": {title}" if title and title != s["label"] else "")
                here.append((SPAN_LINE_COLOURS.get(span_category(s["label"]), "#374151"), label))
        out.append(here)
    return out


def span_legend(spans: list[dict]) -> str:
    """HTML key of the span categories present: a coloured underline per category."""
    cats = dict.fromkeys(span_category(s["label"]) for s in spans)
    return " ".join(f'<span style="border-bottom:3px solid {SPAN_LINE_COLOURS.get(c, "#374151")};margin-right:8px">'
                    f"{html.escape(c)}</span>" for c in cats)


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


def start_job(start, jobs_key: str) -> None:
    """Start a training (``start()`` returns the new ``Job``), remember its id under ``jobs_key`` and rerun.

    Only one training runs at a time (the registry refuses a second one): that refusal
    is shown as a warning, not an error.

        start_job(lambda: registry().start("ppo", config, label), K("jobs"))
    """
    try:
        job = start()
    except RuntimeError as exc:
        st.warning(str(exc))
        return
    st.session_state.setdefault(jobs_key, []).append(job.id)
    st.rerun()
