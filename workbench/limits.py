"""Bounds the pages put on what a user feeds them: text lengths and held-out split sizes.

What it is: the constants every page enforces, in one place (docs/app.md states them),
and pure helpers that turn user data into settings the trainers accept. A page shows
the message these helpers return instead of starting a model on something too long or
a training that would fail at once.

What it leaves out: the model's own context length (``workbench.state.model_context_length``),
which the explorer checks as well, and the trainers' token limits (``max_length``,
``max_prompt_tokens``), which cut or drop examples inside the trainer.

    >>> preference_eval_size([{"prompt": f"q{i}"} for i in range(10)])
    2
"""

from __future__ import annotations

import json

MAX_PROMPT_CHARS = 2_000
"""longest prompt the explorer scores or samples from (data-set prompts are cut to their last MAX_PROMPT_CHARS)"""
MAX_RESPONSE_CHARS = 6_000
"""longest response the explorer scores"""
MAX_RESPONSE_TOKENS = 1_000
"""longest response (in tokens) the explorer draws; the heatmap stays under ~1 s up to here"""
TOKEN_LABELS_UP_TO = 120
"""heatmaps write every token on the x axis up to this many tokens; beyond it the axis shows indices
(the token is still on hover) and the explorer adds a coloured-text view of the response"""
MAX_RUN_NAME_CHARS = 60
"""longest run name the lab accepts"""

PREFERENCE_EVAL_SIZE = 16
"""held-out pairs of the page's short DPO/SimPO runs when the data set is large enough"""


def text_problem(prompt: str, response: str | None = None) -> str | None:
    """A message when the prompt or response is beyond the limits above, else None."""
    if len(prompt) > MAX_PROMPT_CHARS:
        return (f"The prompt has {len(prompt):,} characters; the workbench handles at most {MAX_PROMPT_CHARS:,}. "
                "Shorten it (keep its end: that is what the model answers).")
    if response is not None and len(response) > MAX_RESPONSE_CHARS:
        return (f"The response has {len(response):,} characters; the explorer handles at most {MAX_RESPONSE_CHARS:,} "
                f"(about {MAX_RESPONSE_TOKENS:,} tokens). Shorten it.")
    return None


def _prompt_key(record: dict) -> str:
    prompt = record.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def preference_max_eval_size(records: list[dict]) -> int:
    """The most pairs that can be held out of ``records`` and still leave some to train on.

    The trainers split by prompt (every pair of a prompt on one side), so the held-out
    side may get a whole group more than asked; asking for at most n - (largest group)
    always leaves at least one group to train on. 0 when there is a single prompt.
    """
    groups: dict[str, int] = {}
    for r in records:
        key = _prompt_key(r)
        groups[key] = groups.get(key, 0) + 1
    return len(records) - max(groups.values()) if len(groups) > 1 else 0


def preference_eval_size(records: list[dict], default: int = PREFERENCE_EVAL_SIZE) -> int:
    """Held-out pairs for a short run on ``records``: about a fifth, at most ``default``, never all of them
    (0: nothing held out, no eval/ curves)."""
    if not records:
        return 0
    return min(default, max(1, len(records) // 5), preference_max_eval_size(records))


def preference_problem(records: list[dict] | None, eval_size: int) -> str | None:
    """Why a short run on ``records`` holding out ``eval_size`` pairs cannot start, else None."""
    if not records:
        return "There are no preference pairs to train on: pick a data set or upload a file."
    limit = preference_max_eval_size(records)
    if eval_size > limit:
        return (f"Holding out {eval_size} of {len(records)} pairs leaves none to train on (the pairs of one prompt stay "
                f"together); hold out at most {limit}.")
    return None


LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
ALLOW_REMOTE_ENV = "RLHF_WORKBENCH_ALLOW_REMOTE"
"""set to 1 to serve the workbench on a non-loopback address on purpose (e.g. inside a container behind a tunnel)"""


def exposure_problem(address: str | None, host_header: str | None, allow_remote: str | None) -> str | None:
    """Why the app must not serve this request, or None.

    ``address`` is Streamlit's ``server.address`` (None or "" means every interface: what a server started from
    another folder than the project root gets, since it then does not read ``.streamlit/config.toml``);
    ``host_header`` is the request's Host header (None when no browser is attached, as in Streamlit's AppTest);
    ``allow_remote`` is the value of ``RLHF_WORKBENCH_ALLOW_REMOTE``.

    >>> exposure_problem("127.0.0.1", "127.0.0.1:8501", None) is None
    True
    >>> exposure_problem(None, "10.0.0.5:8501", None).startswith("This server listens on every network interface")
    True
    """
    if not host_header or (allow_remote or "").strip() == "1" or (address or "").strip() in LOOPBACK_ADDRESSES:
        return None
    if not (address or "").strip():
        return ("This server listens on every network interface (it was started from another folder than the project "
                "root, so it did not read .streamlit/config.toml): anyone who can reach this machine could upload files "
                "and start trainings. Start it with `./wb start`, or `streamlit run workbench/app.py` from the project "
                f"root, or pass --server.address 127.0.0.1. To serve it on a network on purpose, set {ALLOW_REMOTE_ENV}=1.")
    return (f"This server listens on '{address}', not on this machine only: anyone who can reach it could upload files "
            "and start trainings. Start it with --server.address 127.0.0.1 (`./wb start` does), or set "
            f"{ALLOW_REMOTE_ENV}=1 to serve it on a network on purpose.")
