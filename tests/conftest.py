"""Shared fixtures: offline models, throw-away run store, the real data (skipped when absent)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs into its own temporary run store."""
    monkeypatch.setenv("RLHF_WORKBENCH_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def default_model_path():
    """Folder of the converted default model (SmolLM2-135M-Instruct); converts once per cache."""
    from core.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tokenizer(default_model_path):
    from core.models import load_tokenizer

    return load_tokenizer(str(default_model_path))


@pytest.fixture(scope="session")
def tiny_model_path(default_model_path):
    """A randomly initialised 2-layer Llama with the default tokenizer (built offline, cached)."""
    from core.models import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture
def tiny_model(tiny_model_path):
    import torch

    from core.models import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(str(tiny_model_path), device="cpu")


@pytest.fixture(scope="session")
def shared_data():
    """The real data folder (../shared/data); tests that need it skip with the reason when it is absent."""
    from core.paths import shared_data_dir

    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set RLHF_WORKBENCH_DATA or place ../shared/data beside the project)")
    return d


# The longest tests first: with `pytest -n 2` (what `./wb test` runs) each worker starts on a long one and the short
# ones fill the gaps, instead of a long notebook starting last and running alone. Serial runs are not affected.
_LONGEST_FIRST = ("test_notebooks.py::test_notebook_in_sync_and_runs[01_", "test_notebooks.py::", "test_kill.py::",
                  "test_browser.py::")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, key in enumerate(_LONGEST_FIRST) if key in item.nodeid), len(_LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order inside each group is kept
