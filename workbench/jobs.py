"""Trainings started from the app, each in its own process; they survive reruns, page switches and other tabs.

What it is: a process-wide ``JobRegistry`` (one per server process, a module global).
``start(kind, config)`` creates the run folder (``Run.create``: the trainer's kind and
config in ``config.json``) and starts ``python -m core.trainers.launch RUN_FOLDER`` with
the project's interpreter, stdout and stderr going to ``RUN_FOLDER/train.log``. The
registry keeps the ``Popen`` handle and the run folder; everything else (progress,
status, error) is read from the run store, which is the only interface between the
app and the training: ``status.json`` and ``metrics.jsonl``.

Why processes, not threads: ``accelerate`` keeps process-wide state (a second job on
another device failed with "AcceleratorState has already been initialized"), and the
trainers seed the global RNGs and tune the allocator; in a child process none of that
reaches the server or the next job.

Stop: ``stop(job)`` sends SIGTERM; the launcher turns it into the trainers' stop flag,
the trainer saves a checkpoint after its current step and marks the run "stopped".
``resume(job)`` continues it from that checkpoint in a new process, in the same folder.
A job whose process died after taking the run (SIGKILL, out of memory) is "interrupted",
never "running" or "failed", and resumes the same way from its newest intact checkpoint.

Runs no job of this server owns (their process died with an earlier server, or a trainer
CLI was killed): ``resume_run(run_path)`` continues an interrupted or stopped one in a
new job; it is refused, naming the owner's pid, while another process holds the run's
writer lock (``core.runstore.Run.acquire_writer``), and the launcher takes that lock
before it writes anything, so even a refused resume leaves the run as it was.

What it leaves out: several trainings at once (on a 2-core CPU a second one would only
slow both down), re-attaching to jobs after a server restart (their runs stay readable
in the run store, ``components.run_is_live`` follows them by pid, and ``resume_run``
takes them over once their process is gone).

    from workbench.jobs import registry
    job = registry().start("ppo", config, label="weights A")
    job.run_path, job.state, job.error, job.last_step
    registry().stop(job); registry().wait(job)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the project: ``python -m core.trainers.launch`` runs from here
LOG_NAME = "train.log"


@dataclass
class Job:
    """One training started from the app: a run folder and the process training it."""

    id: str
    kind: str
    label: str
    config: Any
    run_path: Path
    process: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    stop_sent: bool = False

    # ---------------------------------------------------------------- read from the process and the run store
    def _status(self) -> dict:
        """``effective_status()``: "interrupted" once the process that took the run is gone."""
        from core.runstore import Run

        try:
            return Run(self.run_path).effective_status()
        except Exception:  # noqa: BLE001 - deleted folder or a status being replaced right now
            return {}

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def state(self) -> str:
        """running | stopping | finished | stopped | failed | interrupted (the process died after taking the run)."""
        if self.alive:
            return "stopping" if self.stop_sent else "running"
        status = self._settled().get("status")
        return status if status in ("finished", "stopped", "failed", "interrupted") else "failed"

    @property
    def error(self) -> str | None:
        if self.alive:
            return None
        status = self._settled()
        if status.get("status") == "failed":
            return status.get("error") or f"the training failed; see {self.run_path / LOG_NAME}"
        return None

    def _settled(self) -> dict:
        """The final status. A process killed after it took the run reads "interrupted" (``effective_status``); one
        that ended before it took the run (still "running" on disk, no writer lock) is marked failed here."""
        from core.runstore import Run

        status = self._status()
        if status.get("status") == "running" and not self.alive and self.process is not None:
            error = (f"the training process ended (exit code {self.process.returncode}) without a final status; "
                     f"its output is in {self.run_path / LOG_NAME}")
            try:
                Run(self.run_path).set_status("failed", error=error)  # the process is gone: no other writer
            except Exception:  # noqa: BLE001 - deleted folder
                pass
            status = {**status, "status": "failed", "error": error}
        return status

    @property
    def last_step(self) -> int | None:
        step = self._status().get("step")
        return int(step) if isinstance(step, (int, float)) else None

    @property
    def phase(self) -> tuple[str, int | None, int | None] | None:
        """(name, done, total) of the phase the running training reports (``core.trainers.common.set_phase``),
        e.g. ("reference pass", 37, 120); done/total are None for a phase without a count; None between phases."""
        status = self._status()
        name = status.get("phase") if status.get("status") == "running" else None
        if not name:
            return None
        count = lambda k: int(status[k]) if isinstance(status.get(k), (int, float)) else None  # noqa: E731
        return str(name), count("phase_done"), count("phase_total")

    @property
    def total_steps(self) -> int | None:
        total = getattr(self.config, "num_iterations", None) or getattr(self.config, "num_steps", None)
        return int(total) if total else None


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
        run_path = Path(run_path).resolve()
        return next((j for j in reversed(list(self.jobs.values())) if j.run_path == run_path), None)

    # ---------------------------------------------------------------- start, stop, resume
    def start(self, kind: str, config: Any, label: str = "") -> Job:
        """Create the run folder for ``config`` (the trainer's config dataclass) and train it in a new process.

        Refuses while another job runs.
        """
        from core.runstore import Run

        with self._lock:
            self._refuse_if_busy()
            run = Run.create(kind, config, name=label or kind)
            job = Job(id=uuid.uuid4().hex[:8], kind=kind, label=label or kind, config=config, run_path=run.path.resolve())
            job.process = _spawn(job.run_path)
            self.jobs[job.id] = job
        return job

    def resume(self, job: Job) -> Job:
        """Continue ``job``'s run (stopped, interrupted or failed) from its newest intact checkpoint, in a new process;
        a new Job."""
        return self._resume(job.run_path, job.kind, job.label, job.config)

    def resume_run(self, run_path) -> Job:
        """Continue a run that no job of this server owns (interrupted, or stopped in an earlier server life) from
        its newest intact checkpoint, in a new process; a new Job.

        RuntimeError with the reason when another process writes the run (its pid), when it
        has no intact checkpoint, or while another job runs.
        """
        from core.runstore import Run
        from core.trainers.launch import build_config, config_class

        run = Run.open(run_path)
        config = build_config(config_class(run.kind), run.config)
        label = str(run.meta.get("name") or run.kind)
        return self._resume(run.path.resolve(), run.kind, label, config)

    def _resume(self, run_path: Path, kind: str, label: str, config: Any) -> Job:
        from core.runstore import LOCK_NAME, Run

        run = Run(run_path)
        with self._lock:
            self._refuse_if_busy()
            if run.writer_alive():
                try:
                    owner = (run.path / LOCK_NAME).read_text().strip() or "?"
                except OSError:
                    owner = "?"
                raise RuntimeError(f"'{label}' is being trained by another process (pid {owner}): stop it first, or "
                                   "wait for it to end; one run has one writer")
            if run.latest_checkpoint() is None:
                broken = run.broken_checkpoints()
                raise RuntimeError(f"'{label}' has no intact checkpoint to resume from"
                                   + (f" ({', '.join(f'{p.name}: {why}' for _, p, why in broken)})" if broken else ""))
            new = Job(id=uuid.uuid4().hex[:8], kind=kind, label=label, config=config, run_path=Path(run_path).resolve())
            new.process = _spawn(new.run_path, "--resume")
            self.jobs[new.id] = new
        return new

    def stop(self, job: Job) -> None:
        """Ask ``job`` to stop after its current step (it saves a checkpoint and marks the run "stopped")."""
        if job.alive:
            job.stop_sent = True
            job.process.send_signal(signal.SIGTERM)

    def wait(self, job: Job, timeout: float = 60.0) -> Job:
        """Block until ``job``'s process ends (tests and scripts; pages poll instead)."""
        if job.process is not None:
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return job

    def _refuse_if_busy(self) -> None:
        busy = next((j for j in self.jobs.values() if j.alive), None)
        if busy is not None:
            raise RuntimeError(
                f"a training is already running ('{busy.label or busy.kind}'); wait for it to finish or stop it, "
                "then start the next one (2 CPU cores: two at once would only slow both down)."
            )


def _spawn(run_path: Path, *args: str) -> subprocess.Popen:
    """``python -m core.trainers.launch RUN_FOLDER`` with this interpreter, output appended to RUN_FOLDER/train.log."""
    with open(run_path / LOG_NAME, "ab") as log:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen([sys.executable, "-m", "core.trainers.launch", str(run_path), *args],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


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
