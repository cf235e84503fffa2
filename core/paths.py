"""Where the workbench keeps things on disk: the model cache, the run store, the real data.

Nothing here imports anything heavy. Every location can be overridden by an
environment variable so that tests and CI can use throw-away folders:

- ``RLHF_WORKBENCH_CACHE``: converted models and trained scorers
  (default ``~/.cache/rlhf-workbench``);
- ``RLHF_WORKBENCH_RUNS``: the run store (default ``./runs`` under the project root);
- ``RLHF_WORKBENCH_DATA``: the real data sets (default ``../shared/data`` beside the project).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of the user cache (converted models, trained toxicity heads)."""
    env = os.environ.get("RLHF_WORKBENCH_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "rlhf-workbench"
    return root.expanduser()


def runs_dir() -> Path:
    """Root of the run store: one sub-folder per training run."""
    env = os.environ.get("RLHF_WORKBENCH_RUNS")
    return Path(env).expanduser() if env else PROJECT_ROOT / "runs"


def shared_data_dir() -> Path:
    """Folder with the real data sets (QA-Feedback, HH-RLHF, Davidson tweets)."""
    env = os.environ.get("RLHF_WORKBENCH_DATA")
    return Path(env).expanduser() if env else PROJECT_ROOT.parent / "shared" / "data"


def demo_data_dir() -> Path:
    """The small demo set shipped inside the package (written for this project)."""
    return Path(__file__).resolve().parent / "demo_data"
