"""Fault injection, a testing hook: SIGKILL this process at a chosen durable write of a run folder.

The run store and the model export call ``point(label)`` at every durable-write event:
a temporary file written, a rename, a metrics or sample line appended, each file of a
checkpoint, an old checkpoint set aside and removed, the exported model put in place.
Outside tests neither variable below is set: ``point`` returns at once and nothing else
changes (the cost is one function call next to an fsync).

    RLHF_WORKBENCH_KILL_AT=N          SIGKILL at this process's N-th event (1-based)
    RLHF_WORKBENCH_KILL_AT=LABEL#K    SIGKILL at the K-th event named LABEL (no #K: the first)
    RLHF_WORKBENCH_FAULT_LOG=FILE     append "N<TAB>LABEL#K" to FILE at each event (to count and name them)

With either set (``ARMED``), an append writes its text in two parts with the event
"... half a line" between them, so that a kill there leaves a torn last line, as a kill in
the middle of a write can. Labels say what and at which step, e.g.
``metrics.jsonl step 4: half a line``, ``checkpoint step-000004: model.safetensors written``,
``status.json running step 4 held-out evaluation 0/1: temporary written``; a label with its
occurrence number (``#K``) names the same moment in a run and in a resumed copy of it.

``tests/test_kill.py`` kills tiny PPO and DPO runs at 20+ seeded events each this way
(docs/reliability.md, "SIGKILL at any moment"). What it leaves out: faults other than
SIGKILL (a full disk, a torn file after a power loss: ``tests/test_runstore.py``).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "RLHF_WORKBENCH_KILL_AT"
LOG_ENV = "RLHF_WORKBENCH_FAULT_LOG"

ARMED = False  # read as faults.ARMED (the run store splits appends only when armed)
_state: dict = {"kill_at": None, "log": None, "count": 0, "seen": {}}


def configure(kill_at: int | str | None = None, log: str | os.PathLike | None = None) -> None:
    """Arm (or, with no arguments, disarm) the hook in this process and restart its event count.

    kill_at: an event number (int or digits) or ``"LABEL#K"``; log: a file to append the events to.
    """
    global ARMED
    if isinstance(kill_at, str):
        if kill_at.strip().isdigit():
            kill_at = int(kill_at)
        else:
            label, _, k = kill_at.rpartition("#") if "#" in kill_at else (kill_at, "", "1")
            kill_at = (label, int(k))
    _state.update(kill_at=kill_at, log=os.fspath(log) if log else None, count=0, seen={})
    ARMED = kill_at is not None or log is not None


def point(label: str) -> None:
    """One durable-write event: counted, logged, and this process killed here if it is the chosen one."""
    if not ARMED:
        return
    _state["count"] += 1
    k = _state["seen"][label] = _state["seen"].get(label, 0) + 1
    if _state["log"]:
        with open(_state["log"], "a") as f:
            f.write(f"{_state['count']}\t{label}#{k}\n")
    if _state["kill_at"] in (_state["count"], (label, k)):
        os.kill(os.getpid(), signal.SIGKILL)


configure(os.environ.get(KILL_AT_ENV) or None, os.environ.get(LOG_ENV) or None)
