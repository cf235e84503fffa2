"""The workbench's server started from Python: for the browser tests and the server benchmarks.

What it is: ``local_server(env, log_path)``, a context manager that runs ``streamlit run
workbench/app.py`` (headless, no usage statistics, no file watcher) on 127.0.0.1 and a free
port in a process group of its own, waits until ``/_stcore/health`` answers, yields a
``LocalServer`` (its URL and process), and on exit ends the server and everything it started
(trainings, JupyterLab) that outlived it.

What it leaves out: driving the pages (Playwright, in the callers), the app's own start-up
(``./wb start``).

    with local_server(dict(os.environ, RLHF_WORKBENCH_MODEL="tiny-random-llama"), Path("server.log")) as server:
        urllib.request.urlopen(server.url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LocalServer:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen  # the streamlit process (its pid leads its own process group)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(env: dict, log_path: Path, *, cwd: Path = ROOT, address: str | None = "127.0.0.1",
                 start_timeout: float = 60.0, stop_timeout: float = 10.0):
    """Run the workbench's server with ``env``, its output in ``log_path``; yields a ``LocalServer`` once it is healthy.

    cwd: the folder it starts from (the project root reads ``.streamlit/config.toml``). address: the
    ``--server.address`` flag (None: no flag, Streamlit's default unless a config says otherwise); the URL is
    127.0.0.1 either way. RuntimeError naming the log when the server exits or is not healthy within start_timeout.
    """
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "workbench" / "app.py"),
             *(["--server.address", address] if address else []),
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the trainings and JupyterLab it starts end with it
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start; see {log_path}")
                time.sleep(0.3)
            yield LocalServer(url, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # anything it started that outlived it
            except ProcessLookupError:
                pass
