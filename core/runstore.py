"""The run store: one folder per training run, readable while the run is going.

Layout of ``runs/<run_id>/``::

    config.json      {"kind": "ppo", "config": {...}, "created": ...}     written once
    status.json      {"status": "running"|"finished"|"stopped"|"failed", "error": ..., "step": ...}  atomic
    metrics.jsonl    one {"step": s, "time": t, name: value, ...} per logged step, flushed each line
    samples.jsonl    one {"step": s, "prompt", "response", "tokens", "per_token": {field: [...]}} per sample
    checkpoints/step-000010/
        model.safetensors       the trainable weights (all of them, or the LoRA adapter)
        optimizer.safetensors   optimizer tensors; optimizer.json its non-tensor state
        trainer_state.json      step, RNG states, anything the trainer needs to continue

Every write is either an append of whole lines (flushed and fsynced) or a write
to a temporary file renamed over the old one, so a crash never leaves a
half-written status or checkpoint. ``resume`` truncates metrics and samples
after the checkpoint's step so that a resumed run continues the same history.

What it leaves out: concurrent writers to one run (one trainer owns a run).
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

from core.paths import runs_dir

STATUSES = ("running", "finished", "stopped", "failed")  # stopped: on request, at a checkpoint (resumable)


class RunStoreError(RuntimeError):
    """A run folder is missing or malformed; the message names the folder."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        _atomic_write_text(path / "config.json", json.dumps({"kind": kind, "name": name, "config": _jsonable(config), "created": time.time()}, indent=2))
        run.set_status("running", step=0)
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
        _atomic_write_text(self.path / "status.json", json.dumps(_jsonable(current), indent=2))

    def status(self) -> dict:
        try:
            return json.loads((self.path / "status.json").read_text())
        except FileNotFoundError:
            raise RunStoreError(f"{self.path} has no status.json: it may have been deleted") from None
        except ValueError:
            return {"status": "failed", "error": "status.json unreadable"}

    # ---------------------------------------------------------------- metrics and samples
    def _append(self, name: str, rows: Iterable[dict]) -> None:
        with open(self.path / name, "a") as f:
            for row in rows:
                f.write(json.dumps(_jsonable(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._append("metrics.jsonl", [{"step": int(step), "time": time.time(), **metrics}])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self._append("samples.jsonl", [{"step": int(step), **s} for s in samples])

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def samples(self, step: int | None = None) -> list[dict]:
        rows = _read_jsonl(self.path / "samples.jsonl")
        return rows if step is None else [r for r in rows if r.get("step") == step]

    def truncate_after(self, step: int) -> None:
        """Drop metric and sample rows logged after ``step`` (used when resuming from a checkpoint)."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            rows = [r for r in _read_jsonl(self.path / name) if r.get("step", 0) <= step]
            _atomic_write_text(self.path / name, "".join(json.dumps(r) + "\n" for r in rows))

    # ---------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        d = self.path / "checkpoints"
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = re.fullmatch(r"step-(\d+)", p.name)
            if m and (p / "trainer_state.json").is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def save_checkpoint(self, step: int, tensors: dict, optimizer=None, state: dict | None = None, keep: int = 2) -> Path:
        """Write ``checkpoints/step-N/`` atomically: weights and optimizer in safetensors, state in JSON."""
        # imported here, not at the top: reading runs (the app, list_runs) stays free of torch
        from safetensors.torch import save_file

        from core.checkpoint import optimizer_to_tensors

        final = self.path / "checkpoints" / f"step-{step:06d}"
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "trainer_state.json").write_text(json.dumps(_jsonable({"step": step, **(state or {})})))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
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
