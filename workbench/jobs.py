"""Trainings that run off the Streamlit script thread and survive reruns, page switches and other tabs.

What it is: a process-wide ``JobRegistry`` (one per server process, a module global)
that starts a trainer ``train_*(config, on_log)`` in a daemon thread. A rerun or a page
switch only re-executes page scripts; the thread and the registry live on, and any
browser tab sees the same jobs. The run store on disk stays the source of truth: a
page reads progress from ``run.metrics()`` / ``run.status()``; the registry only adds
"which run folder belongs to the job I started" and an error message if the trainer
raised before creating a run.

Which run is the job's? The trainers create their own run folder. When the config has
a ``run_name`` field the job sets it to a unique name and claims the folder carrying it;
otherwise it snapshots the run ids that exist when it starts and claims the first new
folder of its kind (under a lock, so two jobs never claim the same folder). The run
returned by the trainer confirms it at the end.

What it leaves out: cancelling a running training (a thread cannot be killed safely;
the trainers have no stop flag), surviving a server restart (use the trainer CLIs for that).
One training at a time: on a 2-core CPU a second one would only slow both down.

    from workbench.jobs import registry
    job = registry().start("ppo", train_ppo, config, label="weights A")
    job.run_path, job.state, job.error
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Job:
    """One training started from the app."""

    id: str
    kind: str
    label: str
    config: Any
    started: float = field(default_factory=time.time)
    finished: float | None = None
    state: str = "starting"  # starting | running | finished | failed
    error: str | None = None
    run_path: Path | None = None
    last_step: int | None = None
    last_metrics: dict = field(default_factory=dict)
    known_runs: set = field(default_factory=set)
    thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running")


class JobRegistry:
    """All jobs of this server process, keyed by job id (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}

    # ---------------------------------------------------------------- queries
    def get(self, job_id: str | None) -> Job | None:
        return self.jobs.get(job_id) if job_id else None

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs.values() if j.alive), None)

    def for_run(self, run_path) -> Job | None:
        run_path = Path(run_path)
        return next((j for j in self.jobs.values() if j.run_path == run_path), None)

    # ---------------------------------------------------------------- start
    def start(self, kind: str, train_fn: Callable, config: Any, label: str = "") -> Job:
        """Start ``train_fn(config, on_log=...)`` in a daemon thread; refuses while another job runs."""
        from core.runstore import list_runs

        with self._lock:
            busy = next((j for j in self.jobs.values() if j.alive), None)
            if busy is not None:
                raise RuntimeError(
                    f"a training is already running ('{busy.label or busy.kind}'); wait for it to finish, "
                    "then start the next one (2 CPU cores: two at once would only slow both down)."
                )
            job = Job(id=uuid.uuid4().hex[:8], kind=kind, label=label or kind, config=config)
            job.config = _named(config, f"{label or kind}-{job.id}")
            job.known_runs = {r.path.resolve() for r in list_runs()}
            self.jobs[job.id] = job
        job.thread = threading.Thread(target=self._work, args=(job, train_fn), name=f"wb-job-{job.id}", daemon=True)
        job.thread.start()
        return job

    # ---------------------------------------------------------------- the thread
    def _work(self, job: Job, train_fn: Callable) -> None:
        from core.trainers.common import explain_exception

        job.state = "running"

        def on_log(step: int, metrics: dict) -> None:
            job.last_step, job.last_metrics = int(step), dict(metrics)
            if job.run_path is None:
                self._claim_run(job)

        try:
            run = train_fn(job.config, on_log=on_log)
            if run is not None and getattr(run, "path", None) is not None:
                job.run_path = Path(run.path).resolve()
            elif job.run_path is None:
                self._claim_run(job)
            job.state = "finished"
        except BaseException as exc:  # noqa: BLE001 - the message goes to the page, never a traceback
            if job.run_path is None:
                self._claim_run(job)
            job.error = explain_exception(exc)
            job.state = "failed"
        finally:
            job.finished = time.time()

    def _claim_run(self, job: Job) -> None:
        """Give ``job`` the oldest run folder of its kind created after it started and not claimed yet."""
        from core.runstore import list_runs

        wanted = getattr(job.config, "run_name", "") or None
        with self._lock:
            taken = {j.run_path for j in self.jobs.values() if j.run_path is not None}
            for run in sorted(list_runs(), key=lambda r: r.path.name):
                path = run.path.resolve()
                if path in job.known_runs or path in taken:
                    continue
                try:
                    kind, name = run.kind, run.meta.get("name")
                except Exception:  # noqa: BLE001 - half-written folder: not ours yet
                    continue
                if wanted is not None and name == wanted or wanted is None and kind == job.kind:
                    job.run_path = path
                    return

    def wait(self, job: Job, timeout: float = 60.0) -> Job:
        """Block until ``job`` ends (tests and scripts; pages poll instead)."""
        if job.thread is not None:
            job.thread.join(timeout)
        return job


def _named(config, run_name: str):
    """``config`` with ``run_name`` set (when the trainer's config has that field and it is empty)."""
    import dataclasses
    import re

    if dataclasses.is_dataclass(config) and "run_name" in {f.name for f in dataclasses.fields(config)} and not config.run_name:
        return dataclasses.replace(config, run_name=re.sub(r"[^A-Za-z0-9_.=-]+", "-", run_name).strip("-"))
    return config


_REGISTRY: JobRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def registry() -> JobRegistry:
    """The process-wide registry (one per Streamlit server, shared by every session and tab).

    A module global rather than ``st.cache_resource``: it must survive ``st.cache_resource.clear()``
    (the sidebar's "reload models" button), or running trainings would be orphaned.
    """
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = JobRegistry()
        return _REGISTRY
