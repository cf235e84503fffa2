"""The run store: one folder per training run, readable while the run is going.

Layout of ``runs/<run_id>/``::

    config.json      {"kind": "ppo", "config": {...}, "created": ...}     written once
    status.json      {"status": "running"|"finished"|"stopped"|"failed", "error": ..., "step": ...}  atomic
    metrics.jsonl    one {"step": s, "time": t, name: value, ...} per logged step, flushed each line
    samples.jsonl    one {"step": s, "prompt", "response", "tokens", "per_token": {field: [...]}} per sample
    eval_samples.jsonl  one {"step": s, "prompt", "response", "totals": {component: Σ_t r_t}, "kl", "length"}
                     per held-out evaluation sample (same prompts and seed at every step: pairable)
    checkpoints/step-000010/
        model.safetensors       the trainable weights (all of them, or the LoRA adapter)
        optimizer.safetensors   optimizer tensors; optimizer.json its non-tensor state
        trainer_state.json      step, RNG states, anything the trainer needs to continue

Every write is either an append of whole lines (flushed and fsynced) or a write
to a temporary file renamed over the old one (the files and the folder fsynced),
so a crash never leaves a half-written status or checkpoint; an old checkpoint is
renamed to a temporary name before it is deleted. A crash in an append can leave a
torn last line: readers skip it. ``resume`` truncates metrics and samples after the
checkpoint's step so that a resumed run continues the same history. Each of these
durable steps calls ``core.faults.point`` (a testing hook that can SIGKILL the
process there; tests/test_kill.py).

One writer per run: a trainer takes ``acquire_writer()``, an OS lock (``fcntl.flock``
on ``RUN/.writer.lock``) held until it ends or its process dies; a second trainer on
the same run (two ``--resume-from``, or a resume while the original still runs) is
refused with the owner's pid. The kernel frees the lock of a dead process, so a stale
lock is simply taken over. A run left "running" by a process that died is reported as
"interrupted" by ``effective_status()`` (never "running"), with its last step, so it can
be resumed. Taking the lock also deletes the temporary files and ``.step-N.tmp-PID``
folders that a killed write left behind.

Checkpoints are checked before use: ``checkpoints()`` lists only intact ones (their
JSON parses; every safetensors file has a valid header and all its bytes), so resuming
falls back to the newest intact checkpoint, and ``broken_checkpoints()`` names the others.

What it leaves out: locking on network file systems without ``flock`` support.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from core import faults
from core.paths import runs_dir

STATUSES = ("running", "finished", "stopped", "failed")  # stopped: on request, at a checkpoint (resumable)
LOCK_NAME = ".writer.lock"
_HELD: dict[Path, int] = {}  # run folder -> fd of the writer lock this process holds


class RunStoreError(RuntimeError):
    """A run folder is missing or malformed; the message names the folder."""


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so that a rename in it is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str, label: str | None = None) -> None:
    """Write a temporary file, fsync it, rename it over ``path``, fsync the folder (label: for core.faults)."""
    label = label or path.name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    faults.point(f"{label}: temporary written")
    os.replace(tmp, path)
    faults.point(f"{label}: renamed")
    _fsync_path(path.parent)


def _remove_folder(folder: Path, label: str) -> None:
    """Rename ``folder`` to a hidden temporary name, then delete it: a kill in the middle of the
    deletion leaves a temporary folder (removed when the run is next taken), never a half-deleted
    checkpoint that still looks like one."""
    aside = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-removed")
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(folder, aside)
    except FileNotFoundError:  # already gone
        return
    faults.point(f"{label}: {folder.name} set aside")
    shutil.rmtree(aside, ignore_errors=True)
    faults.point(f"{label}: {folder.name} removed")


def pid_alive(pid) -> bool:
    """Whether a process with this PID exists (signal 0; a PID we may not signal exists)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_safetensors(path: Path) -> str | None:
    """None if ``path`` is a complete safetensors file (valid header, every tensor's bytes present), else the problem."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                return f"{path.name}: truncated header ({size} bytes)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name}: unreadable header ({exc})"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    if size < 8 + n + max(ends, default=0):
        return f"{path.name}: truncated ({size} of {8 + n + max(ends, default=0)} bytes)"
    return None


def check_checkpoint(folder: Path) -> str | None:
    """None if the checkpoint folder is intact, else what is wrong with it (checked before anything is truncated)."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({exc})"
    if not isinstance(state, dict):
        return "trainer_state.json is not a JSON object"
    problem = check_safetensors(folder / "model.safetensors")
    if problem is None and ((folder / "optimizer.json").exists() or (folder / "optimizer.safetensors").exists()):
        try:
            json.loads((folder / "optimizer.json").read_text())
        except (OSError, ValueError) as exc:
            return f"optimizer.json unreadable ({exc})"
        problem = check_safetensors(folder / "optimizer.safetensors")
    return problem


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def _read_jsonl(path: Path) -> list[dict]:
    """Whole lines only: a line being written right now (no newline yet) is skipped."""
    if not path.is_file():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class Run:
    """Handle on one run folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, kind: str, config: Any, name: str | None = None, root: Path | None = None) -> "Run":
        root = Path(root) if root is not None else runs_dir()
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or kind).strip("-") or kind
        base = f"{stamp}-{slug}"
        for i in range(1000):
            path = root / (base if i == 0 else f"{base}-{i}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        # status first: config.json makes the folder a run, so a listed run always has a status
        run.set_status("running", step=0)
        _atomic_write_text(path / "config.json", json.dumps({"kind": kind, "name": name, "config": _jsonable(config), "created": time.time()}, indent=2))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise RunStoreError(f"{path} is not a run folder (no config.json): it may have been deleted or moved")
        return cls(path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise RunStoreError(f"{self.path}/config.json unreadable: {exc}") from None

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    # ---------------------------------------------------------------- status
    def set_status(self, status: str, error: str | None = None, **extra: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        current = self.status() if (self.path / "status.json").exists() else {}
        current.update(extra)
        current.update({"status": status, "error": error, "updated": time.time(), "pid": os.getpid()})
        phase = f" {current['phase']}" if current.get("phase") else ""
        if phase and current.get("phase_done") is not None:
            phase += f" {current['phase_done']}/{current.get('phase_total')}"
        _atomic_write_text(self.path / "status.json", json.dumps(_jsonable(current), indent=2),
                           label=f"status.json {status} step {current.get('step')}{phase}")

    def status(self) -> dict:
        try:
            return json.loads((self.path / "status.json").read_text())
        except FileNotFoundError:
            raise RunStoreError(f"{self.path} has no status.json: it may have been deleted") from None
        except ValueError:
            return {"status": "failed", "error": "status.json unreadable"}

    # ---------------------------------------------------------------- one writer
    def acquire_writer(self) -> None:
        """Take the run's writer lock for this process (kept until ``release_writer`` or the process ends).

        RunStoreError naming the owner's pid when another process holds it. Also removes
        the temporary files and folders a killed write left behind (no one else writes now).
        """
        import fcntl

        key = self.path.resolve()
        if key in _HELD:
            return
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunStoreError(f"{self.path} is being written by another process (pid {owner}): stop it first "
                                "(or wait for it to end); one run has one writer") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = fd
        faults.point("writer lock taken")
        self._remove_stale_temporaries()

    def release_writer(self) -> None:
        """Give the writer lock back (the process ending does the same)."""
        fd = _HELD.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def writer_alive(self) -> bool:
        """Whether some process holds the writer lock now (this one included)."""
        import fcntl

        if self.path.resolve() in _HELD:
            return True
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock if we got it
        return False

    def effective_status(self) -> dict:
        """``status()``, with "interrupted" for a "running" run whose writer is gone (its process died).

        A run that a trainer took (the lock file exists) is interrupted when no process holds
        the lock; one that no trainer took yet, when the process that wrote its status is gone.
        """
        st = self.status()
        if st.get("status") != "running" or self.writer_alive():
            return st
        taken = (self.path / LOCK_NAME).exists()
        if taken or not pid_alive(st.get("pid")):
            latest = self.latest_checkpoint()
            return {**st, "status": "interrupted", "resumable_from": latest[0] if latest else None,
                    "error": st.get("error") or "the process writing this run ended without finishing it; "
                                                "resume it from its last checkpoint"}
        return st

    def _remove_stale_temporaries(self) -> None:
        for p in list(self.path.glob(".*.tmp-*")) + list((self.path / "checkpoints").glob(".step-*.tmp-*")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- metrics and samples
    def _append(self, name: str, rows: Iterable[dict]) -> None:
        rows = [_jsonable(row) for row in rows]
        lines = [json.dumps(row) + "\n" for row in rows]
        text, label = "".join(lines), f"{name} step {rows[0].get('step') if rows else None}"
        with open(self.path / name, "a") as f:
            if faults.ARMED and text:  # testing hook: a kill between the two parts leaves a torn last line
                cut = len(text) - len(lines[-1]) // 2
                f.write(text[:cut])
                f.flush()
                faults.point(f"{label}: half a line")
                text = text[cut:]
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if lines:
            faults.point(f"{label}: appended")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._append("metrics.jsonl", [{"step": int(step), "time": time.time(), **metrics}])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self._append("samples.jsonl", [{"step": int(step), **s} for s in samples])

    def log_eval_samples(self, step: int, samples: list[dict]) -> None:
        self._append("eval_samples.jsonl", [{"step": int(step), **s} for s in samples])

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def samples(self, step: int | None = None) -> list[dict]:
        rows = _read_jsonl(self.path / "samples.jsonl")
        return rows if step is None else [r for r in rows if r.get("step") == step]

    def eval_samples(self, step: int | None = None) -> list[dict]:
        rows = _read_jsonl(self.path / "eval_samples.jsonl")
        return rows if step is None else [r for r in rows if r.get("step") == step]

    def truncate_after(self, step: int) -> None:
        """Drop metric and sample rows logged after ``step`` (used when resuming from a checkpoint)."""
        for name in ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl"):
            if name == "eval_samples.jsonl" and not (self.path / name).is_file():
                continue
            rows = [r for r in _read_jsonl(self.path / name) if r.get("step", 0) <= step]
            _atomic_write_text(self.path / name, "".join(json.dumps(r) + "\n" for r in rows),
                               label=f"{name} cut after step {step}")

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint_folders(self) -> list[tuple[int, Path]]:
        d = self.path / "checkpoints"
        if not d.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name)))

    def checkpoints(self) -> list[tuple[int, Path]]:
        """The intact checkpoints (``check_checkpoint``), oldest first."""
        return [(step, p) for step, p in self._checkpoint_folders() if check_checkpoint(p) is None]

    def broken_checkpoints(self) -> list[tuple[int, Path, str]]:
        """(step, folder, problem) of every checkpoint folder that is not intact."""
        return [(step, p, problem) for step, p in self._checkpoint_folders() if (problem := check_checkpoint(p)) is not None]

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def save_checkpoint(self, step: int, tensors: dict, optimizer=None, state: dict | None = None, keep: int = 2) -> Path:
        """Write ``checkpoints/step-N/`` atomically: weights and optimizer in safetensors, state in JSON."""
        # imported here, not at the top: reading runs (the app, list_runs) stays free of torch
        from safetensors.torch import save_file

        from core.checkpoint import optimizer_to_tensors

        final = self.path / "checkpoints" / f"step-{step:06d}"
        label = f"checkpoint {final.name}"  # core.faults: a kill may land after each of these steps
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faults.point(f"{label}: temporary folder made")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        faults.point(f"{label}: model.safetensors written")
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            faults.point(f"{label}: optimizer.safetensors written")
            (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
            faults.point(f"{label}: optimizer.json written")
        (tmp / "trainer_state.json").write_text(json.dumps(_jsonable({"step": step, **(state or {})})))
        faults.point(f"{label}: trainer_state.json written")
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
        faults.point(f"{label}: files fsynced")
        if final.exists():
            _remove_folder(final, label)
        os.replace(tmp, final)
        faults.point(f"{label}: renamed")
        _fsync_path(final.parent)
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            _remove_folder(old, label)
        for _, broken, _ in self.broken_checkpoints():  # a newer intact checkpoint now exists
            _remove_folder(broken, label)
        return final


def list_runs(root: Path | None = None, kind: str | None = None) -> list[Run]:
    """All run folders under ``root`` (newest first); folders that are not runs are skipped."""
    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if kind is not None:
        runs = [r for r in runs if _safe_kind(r) == kind]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


def _safe_kind(run: Run) -> str | None:
    try:
        return run.kind
    except (RunStoreError, KeyError):
        return None
