"""Uploaded files: written once, checked once, kept private to the browser session, removed when replaced.

What it is: a page passes Streamlit's ``UploadedFile`` and a validating function; the
file is written on the first rerun that sees it into the session's own temporary folder
(``tempfile.mkdtemp``: mode 0700, an unpredictable name) under an unpredictable file
name, its SHA-256 and the validation result are kept in the session state, and later
reruns reuse them without hashing, writing or validating again. A new upload replaces
the old file (deleted); every folder this server process made is deleted at exit. The
uploaded file's own name is shown to the user but never used in a path. The size is
capped by ``server.maxUploadSize`` in ``.streamlit/config.toml``.

A training started from an upload reads it in another process, and again when resumed
(maybe after a server restart), so it gets its own copy: ``training_copy`` writes the
file once per content into the run store (``runs_dir()/.uploads/SHA256.jsonl``, mode 0600),
where it lives as long as the runs do.

What it leaves out: the widget itself (``st.file_uploader`` in the page). No Streamlit
import: the state is any dict (``st.session_state`` in the app, a plain dict in tests).

    entry = uploads.keep(st.session_state, K("upload_file"), upload, core.data.load_preference_file)
    entry.path, entry.value, entry.error
    config.dataset = str(uploads.training_copy(entry))    # when a training starts
"""

from __future__ import annotations

import atexit
import hashlib
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # kept from the upload's name; anything else is written as .jsonl
_FOLDERS: list[Path] = []  # made by this process, removed at exit


@dataclass
class Upload:
    """One kept upload: where it was written, its hash, and what validating it gave (value or the exception)."""

    file_id: str
    name: str
    sha256: str
    path: Path
    value: Any = None
    error: Exception | None = None


def _session_folder(state) -> Path:
    folder = state.get("_uploads_folder")
    if folder is None or not Path(folder).is_dir():
        folder = Path(tempfile.mkdtemp(prefix="rlhf-workbench-upload-"))
        _FOLDERS.append(folder)
        state["_uploads_folder"] = folder
    return Path(folder)


def keep(state, key: str, upload, validate: Callable[[Path], Any]) -> Upload:
    """The kept ``Upload`` for ``upload`` under ``state[key]``: written and validated only when the file changed.

    validate(path) -> value; a ``ValueError`` (e.g. ``core.data.DataError``) it raises is
    kept as ``error`` instead of the value.
    """
    file_id = str(getattr(upload, "file_id", None) or f"{upload.name}:{getattr(upload, 'size', '')}")
    kept = state.get(key)
    if isinstance(kept, Upload) and kept.file_id == file_id and kept.path.is_file():
        return kept
    forget(state, key)
    raw = upload.getvalue()
    suffix = Path(upload.name).suffix.lower()
    path = _session_folder(state) / (secrets.token_hex(16) + (suffix if suffix in SUFFIXES else ".jsonl"))
    path.write_bytes(raw)
    path.chmod(0o600)
    kept = Upload(file_id, upload.name, hashlib.sha256(raw).hexdigest(), path)
    try:
        kept.value = validate(path)
    except ValueError as exc:
        kept.error = exc
    state[key] = kept
    return kept


def training_copy(kept: Upload, root: Path | None = None) -> Path:
    """The kept upload's copy for training runs: ``root/.uploads/SHA256.suffix`` (root: the run store), written once."""
    from core.paths import runs_dir

    folder = (Path(root) if root is not None else runs_dir()) / ".uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{kept.sha256}{kept.path.suffix}"
    if not path.is_file():
        tmp = folder / f".{secrets.token_hex(8)}.tmp"
        shutil.copyfile(kept.path, tmp)
        tmp.chmod(0o600)
        tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def forget(state, key: str) -> None:
    """Delete the file kept under ``state[key]`` (a replaced or removed upload)."""
    kept = state.pop(key, None)
    if isinstance(kept, Upload):
        kept.path.unlink(missing_ok=True)


@atexit.register
def _remove_folders() -> None:
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
