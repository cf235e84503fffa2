"""The command lines' error handling: a user's mistake is one clear line, not a traceback.

What it is: ``entry_point`` wraps every ``main()`` of the package (the trainers,
``core.rewards.toxicity``, ``core.export``, ``core.models``). The errors that explain a
problem the user can fix (bad data, a setting that cannot work, a model that does not
load, a run folder that cannot be resumed, a reward that cannot be built) are printed as

    [rlhf-workbench] error: pairs.jsonl, record 3: missing 'chosen'

on stderr, and the process exits with status 1. Anything else (a bug) keeps its full
traceback. ``--debug`` on the command line or ``RLHF_WORKBENCH_DEBUG=1`` shows the
traceback of the clear errors too.

What it leaves out: parsing flags (``tyro`` / ``argparse`` in each ``main``).

    from core.cli import entry_point

    @entry_point
    def main() -> None: ...
"""

from __future__ import annotations

import functools
import os
import sys

DEBUG_ENV = "RLHF_WORKBENCH_DEBUG"


# the exceptions whose message is written for the user, by qualified name (no imports: every module imports this one)
USER_ERRORS = frozenset({
    "core.data.DataError", "core.models.ModelLoadError", "core.rewards.store.RewardModelError",
    "core.runstore.RunStoreError", "core.trainers.common.NonFiniteLossError", "core.trainers.common.TrainingError",
    "core.trainers.rewards_setup.RewardSetupError", "core.feedback.store.FeedbackError",
})


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is (a subclass of) one of ``USER_ERRORS``."""
    return any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS for c in type(exc).__mro__)


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` in argv (removed from it, so the flag parser never sees it) or RLHF_WORKBENCH_DEBUG set to a true value."""
    argv = sys.argv if argv is None else argv
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def entry_point(main):
    """Decorate a command line's ``main``: clear errors become one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        debug = debug_requested()
        try:
            return main(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is one of the user-facing errors
            if debug or not is_user_error(exc):
                raise
            print(f"[rlhf-workbench] error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapped
