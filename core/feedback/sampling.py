"""Prompts for a feedback project, and sampling its K responses per prompt with a policy.

What it is:
- ``read_prompt_file``: a ``.jsonl`` of ``{"prompt": ...}`` objects (other keys are kept
  as the item's meta) or a ``.txt`` with one prompt per line; a malformed line raises
  ``FeedbackError`` naming the file and the line number.
- ``builtin_prompts``: the prompt sets that ship with the project (``demo``: the demo
  set's questions, ``detox``: provocative openings) and, when the real data is present,
  ``qa-feedback`` (ASQA questions).
- ``sample_responses``: K seeded samples for one prompt. Item i of a project is sampled
  with seed ``project seed * 1_000_003 + position``, so a project samples the same
  responses whether it runs in one go or resumes after a crash (``fill_project``).
  Empty samples (an immediate end-of-sequence) are redrawn up to ``retries`` times.

Responses are sampled by ``core.rollout.generate`` (a user turn for instruct models, the same
text PPO and the explorer sample from) with the item's own ``torch.Generator``, which
``core.sampling`` draws every token from. The studio samples in a thread of the app's server, where
``torch.manual_seed`` would reseed the one process-wide generator that every other session's
sampling draws from (and their draws would shift this project's samples); a local generator
leaves the global RNG state untouched and the samples fixed by the seed alone.

What it leaves out: loading the policy (the caller passes a model and tokenizer).

    from core.feedback.sampling import builtin_prompts, fill_project
    pid = store.create_project("demo", policy="tiny-random-llama", k=4, seed=0,
                               items=[{"prompt": p} for p in builtin_prompts("demo")])
    fill_project(store, pid, policy, tokenizer, on_progress=print)
"""

from __future__ import annotations

import json
from pathlib import Path

from core import data
from core.feedback.store import FeedbackError, FeedbackStore

BUILTIN_SETS = ("demo", "detox", "qa-feedback")


def read_prompt_file(path, text: str | None = None, name: str | None = None) -> list[dict]:
    """Items ``{"prompt", "meta"}`` from a .jsonl (objects with a "prompt" string) or a .txt (a prompt per line).

    text: the file's content when it is already in memory (an upload); name: how to call it in messages.
    Blank lines are ignored; every other problem names the file and the 1-based line.
    """
    label = name or str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FeedbackError(f"prompt file {label} not found") from None
        except UnicodeDecodeError:
            raise FeedbackError(f"prompt file {label} is not UTF-8 text") from None
    as_jsonl = str(name or path).endswith((".jsonl", ".json")) or text.lstrip().startswith("{")
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not as_jsonl:
            items.append({"prompt": line.strip(), "meta": {}})
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise FeedbackError(f"{label}, line {lineno}: not valid JSON ({exc.msg}); each line must be an object "
                                'like {"prompt": "..."}') from None
        if not isinstance(obj, dict):
            raise FeedbackError(f"{label}, line {lineno}: a JSON {type(obj).__name__}, not an object with a \"prompt\"")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise FeedbackError(f"{label}, line {lineno}: \"prompt\" must be non-empty text, got {prompt!r}")
        items.append({"prompt": prompt, "meta": {k: v for k, v in obj.items() if k != "prompt"}})
    if not items:
        raise FeedbackError(f"prompt file {label} has no prompts")
    return items


def builtin_prompts(name: str, n: int | None = None) -> list[str]:
    """Prompts of a built-in set: 'demo', 'detox', or 'qa-feedback' (needs the real data)."""
    if name == "demo":
        prompts = [r["prompt"] for r in data.load_demo_set().spans]
    elif name == "detox":
        prompts = data.load_demo_set().detox_prompts
    elif name == "qa-feedback":
        prompts = [r["question"] for r in data.load_qa_feedback_spans()]
    else:
        raise FeedbackError(f"unknown prompt set {name!r}; expected one of {BUILTIN_SETS}")
    return prompts[:n] if n else prompts


def item_seed(project_seed: int, position: int) -> int:
    return int(project_seed) * 1_000_003 + int(position)


# ----------------------------------------------------------------------------- the policy call site


def _generate(policy, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, generator) -> list[str]:
    """Decoded sampled responses, one per prompt (each prompt as a user turn when the model has a chat template)."""
    from core.rollout import generate, response_texts

    rollout = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       min_new_tokens=min(2, max_new_tokens), chat_template=True, generator=generator)
    return [text.strip() for text in response_texts(tokenizer, rollout)]


def sample_responses(policy, tokenizer, prompt: str, k: int, seed: int, max_new_tokens: int = 48,
                     temperature: float = 1.0, retries: int = 3) -> list[str]:
    """K non-empty responses to ``prompt``, fixed by ``seed``; FeedbackError if some stay empty after ``retries`` redraws.

    Draws from a generator of its own (``torch.Generator(device).manual_seed(seed)``): torch's
    global RNG state is left as it was, and other threads' sampling cannot change these responses.
    """
    import torch  # here, not at the top: the page imports this module and must stay light

    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(int(seed))
    responses = _generate(policy, tokenizer, [prompt] * k, max_new_tokens, temperature, generator)
    for _ in range(retries):
        empty = [i for i, r in enumerate(responses) if not r.strip()]
        if not empty:
            break
        for i, r in zip(empty, _generate(policy, tokenizer, [prompt] * len(empty), max_new_tokens, temperature, generator)):
            responses[i] = r
    if any(not r.strip() for r in responses):
        raise FeedbackError(f"the policy kept giving empty responses to the prompt {prompt[:60]!r}; "
                            "raise the number of new tokens, use another model, or drop the prompt")
    return responses


def fill_project(store: FeedbackStore, project_id: int, policy, tokenizer, max_new_tokens: int | None = None,
                 temperature: float | None = None, on_progress=None) -> int:
    """Sample the K responses of every item that has none yet (one transaction per item); returns how many.

    on_progress(done, total) is called after each item. Safe to call again after a crash:
    finished items are kept and the rest get the same samples they would have got.
    """
    project = store.project(project_id)
    settings = project["settings"]
    max_new_tokens = int(max_new_tokens or settings.get("max_new_tokens", 48))
    temperature = float(temperature if temperature is not None else settings.get("temperature", 1.0))
    items = store.items(project_id)
    todo = [it for it in items if not it["responses"]]
    for n, it in enumerate(todo, 1):
        responses = sample_responses(policy, tokenizer, it["prompt"], project["k"], item_seed(project["seed"], it["position"]),
                                     max_new_tokens, temperature)
        store.add_responses(it["id"], responses)
        if on_progress:
            on_progress(len(items) - len(todo) + n, len(items))
    return len(todo)
