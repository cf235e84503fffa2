"""JupyterLab for the teaching notebooks, started from the app so Home's links lead somewhere.

What it is: ``start(folder)`` runs ``python -m jupyter lab`` on ``folder`` as a child
process of the app server, bound to 127.0.0.1 on a free port with a random token (so
only this machine, holding the link, gets in); one per server, shared by every tab;
stopped when the server exits. ``COMMAND`` is the same thing by hand.

What it leaves out: opening the browser (the page shows links), remote access.

    lab = start(Path("notebooks"))
    lab.url("01_rlhf_pipeline_and_reward_modelling.ipynb")
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

COMMAND = "./wb python -m jupyter lab notebooks/"
"""how to start JupyterLab on the notebooks by hand, from the project root"""

_LOCK = threading.Lock()
_LAB: Lab | None = None


@dataclass
class Lab:
    process: subprocess.Popen
    port: int
    token: str
    log: Path

    def url(self, notebook: str = "") -> str:
        """Link to ``notebook`` (a path inside the served folder), logged in by the token."""
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook}?token={self.token}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """True once the server accepts connections (a few seconds after the start)."""
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running() -> Lab | None:
    """The JupyterLab this server started, if it is still running."""
    return _LAB if _LAB is not None and _LAB.alive else None


def exited() -> str | None:
    """Why the JupyterLab this server started is gone (exit code and log file), or None."""
    if _LAB is None or _LAB.alive:
        return None
    return f"JupyterLab exited (code {_LAB.process.poll()}); its output is in {_LAB.log}"


def start(folder: Path) -> Lab:
    """Start (or return the running) JupyterLab serving ``folder`` on 127.0.0.1; its output goes to a log file."""
    global _LAB
    with _LOCK:
        if running() is not None:
            return _LAB
        port, token = _free_port(), secrets.token_hex(16)
        log = Path(tempfile.gettempdir()) / "rlhf-workbench-jupyter.log"
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                   f"--ServerApp.root_dir={Path(folder).resolve()}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers often run as root; Jupyter refuses that unless told
            command.append("--allow-root")
        with open(log, "ab") as out:
            process = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _LAB = Lab(process, port, token, log)
        atexit.register(stop)
        return _LAB


def stop() -> None:
    """Stop the JupyterLab this server started (if any)."""
    global _LAB
    with _LOCK:
        lab, _LAB = _LAB, None
    if lab is not None and lab.alive:
        lab.process.terminate()
        try:
            lab.process.wait(10)
        except subprocess.TimeoutExpired:
            lab.process.kill()
