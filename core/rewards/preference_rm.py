"""A trained holistic (Bradley-Terry) reward model as a reward component, plus batched scoring.

What it is: the pieces every user of a scalar-head reward model needs, written once.

- ``format_pair``: the exact text a reward model reads for (prompt, response), and where
  the response starts in it. Plain text is ``prompt + separator + response``; chat
  messages go through the tokenizer's chat template. Training, scoring and token-level
  redistribution (``core.rewards.redistribution``) all use it, so they agree.
- ``score_all_positions``: the score head read at EVERY position, (B, T). With a causal
  backbone the hidden state at t only sees tokens <= t, so position t holds the score of
  the prefix y_<=t; RED (``redistribution``) differences these.
- ``sequence_scores``: the holistic score r(x, y), read at the last attended token of
  each row (B,). We gather with the attention mask rather than Hugging Face's
  search for the pad id, so left padding, right padding and a pad token that also
  occurs in the text (SmolLM2 pads with ``<|im_end|>``) all give the same score.
- ``PreferenceReward``: a ``core.rewards.tensor.RewardComponent`` at level "sequence":
  ``(r(x, y) - mean) / std`` with the training-set normalisation from the model's
  ``workbench_reward.json`` (the FineGrainedRLHF ``PreferenceReward`` does the same
  with the C3 model's mean/std).

What it leaves out: training (``core.trainers.reward``), saving and finding models
(``core.rewards.store``), token-level rewards (``core.rewards.redistribution``).

    from core.rewards.store import load_reward_component
    rm = load_reward_component(folder)                  # a PreferenceReward
    rm.score_texts(["Q: 2+2?"], ["4"])                  # raw scores, list of floats
    rm.score(["Q: 2+2?"], ["4"], [[(0, 1)]])            # [[normalised score]]
"""

from __future__ import annotations

from typing import Any

import torch

from core.packing import decoder_hidden_states

Text = str | list  # plain text or chat messages [{role, content}, ...]


# ----------------------------------------------------------------------------- text


def _as_messages(x: Text, role: str) -> list[dict]:
    return x if isinstance(x, list) else [{"role": role, "content": x}]


def format_pair(tokenizer, prompt: Text, response: Text, fmt: str = "auto", separator: str = " ") -> tuple[str, int]:
    """The reward model's input text for (prompt, response) and the character where the response starts.

    fmt: "text" -> prompt + separator + response (strings); "chat" -> the tokenizer's chat
    template over the prompt messages (a string prompt is one user turn) followed by
    the response messages (a string response is one assistant turn); "auto" -> "chat"
    when either side is a list of messages, else "text".
    Returns (text, response_start): text[response_start:] begins with the response
    (for chat, followed by the template's end-of-turn marker).
    """
    if fmt == "auto":
        fmt = "chat" if isinstance(prompt, list) or isinstance(response, list) else "text"
    if fmt == "text":
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise TypeError("fmt='text' needs a string prompt and response; use fmt='chat' for messages")
        return prompt + separator + response, len(prompt) + len(separator)
    if fmt != "chat":
        raise ValueError(f"unknown format {fmt!r}; expected 'text', 'chat' or 'auto'")
    p_msgs, r_msgs = _as_messages(prompt, "user"), _as_messages(response, "assistant")
    prefix = tokenizer.apply_chat_template(p_msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(p_msgs + r_msgs, tokenize=False)
    start = 0
    while start < min(len(prefix), len(full)) and prefix[start] == full[start]:
        start += 1  # the longest common prefix (== len(prefix) for ordinary templates)
    return full, start


def fit_passages(tokenizer, prompt: Text, response: Text, max_length: int, separator: str = " ") -> tuple[Text, bool]:
    """The prompt with its QA passages cut in the MIDDLE so that prompt + separator + response fits max_length tokens.

    A QA-Feedback prompt ``question: Q context: P`` keeps its question, the start and the end
    of P (joined by " ... ") and the whole response; left truncation (``encode``) would drop
    the question first. Other prompts, and prompts that already fit, come back unchanged.
    Returns (prompt, trimmed). When question + response alone exceed max_length the passages
    are dropped whole and ``encode`` still cuts from the left.
    """
    if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.startswith("question:"):
        return prompt, False
    from core.rewards.heads import qa_parts

    question, passages = qa_parts(prompt)
    if not passages:
        return prompt, False
    n = lambda t: len(tokenizer(t, add_special_tokens=True)["input_ids"])  # noqa: E731
    excess = n(prompt + separator + response) - max_length
    if excess <= 0:
        return prompt, False
    ids = tokenizer(passages, add_special_tokens=False)["input_ids"]
    keep = len(ids) - excess - 4  # room for the " ... " marker and re-tokenisation at the joins
    while True:
        if keep <= 0:
            return f"question: {question} context: ...", True
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2):]
        cut = f"question: {question} context: {tokenizer.decode(head)} ... {tokenizer.decode(tail)}"
        if n(cut + separator + response) <= max_length:
            return cut, True
        keep -= 4


def encode(tokenizer, texts: list[str], max_length: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Tokenise with truncation from the LEFT (the score is read at the end, which must survive).

    Returns input_ids, attention_mask (B, T) and offset_mapping (B, T, 2) char spans
    into each text ((0, 0) for special and pad tokens).
    """
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = padding_side, "left"
    try:
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt", return_offsets_mapping=True)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "offset_mapping": enc["offset_mapping"]}


# ----------------------------------------------------------------------------- scoring


def unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, score head) of an ``AutoModelFor{Sequence,Token}Classification`` model."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    head = getattr(base, "score", None) or getattr(base, "classifier", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no 'score' or 'classifier' head")
    return backbone, head


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, H) of the backbone, with positions counted from each row's first real token.

    Padding-free (``core.packing``) when the backbone allows it; otherwise position ids from
    the mask make a left-padded row compute exactly what the same row unpadded computes
    (Llama's default positions would start counting at the padding). Read only attended positions.
    """
    backbone, _ = backbone_and_head(model)
    return decoder_hidden_states(backbone, input_ids, attention_mask)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last attended token (left or right padding)."""
    T = attention_mask.shape[-1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return (positions * attention_mask.long()).argmax(-1)


def gather_last(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at each row's last attended token -> (B, ...)."""
    idx = last_token_index(attention_mask)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def score_all_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar score head at every position, (B, T): entry t is r(prefix up to t) for a causal backbone."""
    _, head = backbone_and_head(model)
    return head(hidden_states(model, input_ids, attention_mask)).squeeze(-1)  # (B, T, 1) -> (B, T)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Holistic scores r(x, y), (B,): the score head at each row's last attended token."""
    _, head = backbone_and_head(model)
    last_hidden = gather_last(hidden_states(model, input_ids, attention_mask), attention_mask)  # (B, H)
    return head(last_hidden).squeeze(-1)


class SequenceScorer(torch.nn.Module):
    """``sequence_scores`` of a reward model as one module: what a trainer hands to DDP, so that the whole
    scoring pass is the wrapped forward (DDP synchronises gradients only of a forward pass through it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.model, input_ids, attention_mask)


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], max_length: int = 1024, batch_size: int = 8) -> list[float]:
    """Raw holistic scores of already formatted texts, in batches (no gradient)."""
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        enc = encode(tokenizer, texts[i : i + batch_size], max_length)
        s = sequence_scores(model, enc["input_ids"].to(device), enc["attention_mask"].to(device))
        out += s.float().cpu().tolist()
    return out


# ----------------------------------------------------------------------------- reward component


class PreferenceReward:
    """A holistic reward model as a sequence-level ``RewardComponent``: (r(x, y) - mean) / std.

    model: a scalar-head model (``load_reward_model`` or a folder saved by
    ``core.rewards.store``); meta: its ``workbench_reward.json`` dict (format,
    separator, normalisation, category); missing keys mean plain text, " ", mean 0, std 1.
    """

    level = "sequence"

    def __init__(self, model, tokenizer, meta: dict[str, Any] | None = None, name: str | None = None,
                 batch_size: int = 8, max_length: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.meta = dict(meta or {})
        self.category = self.meta.get("category")
        self.name = name or self.meta.get("name") or "holistic"
        norm = self.meta.get("normalisation") or {}
        self.mean, self.std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0)) or 1.0
        self.fmt = self.meta.get("format", "text")
        self.separator = self.meta.get("separator", " ")
        self.max_length = int(max_length or self.meta.get("max_length", 1024))
        self.batch_size = batch_size

    def fitted_prompts(self, prompts: list[Text], responses: list[Text]) -> list[Text]:
        """Prompts with QA passages cut in the middle to fit max_length (models saved with trim_passages)."""
        if not self.meta.get("trim_passages"):
            return list(prompts)
        return [fit_passages(self.tokenizer, p, r, self.max_length, self.separator)[0] for p, r in zip(prompts, responses)]

    def texts(self, prompts: list[Text], responses: list[Text]) -> list[tuple[str, int]]:
        prompts = self.fitted_prompts(prompts, responses)
        return [format_pair(self.tokenizer, p, r, self.fmt, self.separator) for p, r in zip(prompts, responses)]

    def score_texts(self, prompts: list[Text], responses: list[Text]) -> list[float]:
        """Raw scores r(x, y), one per (prompt, response)."""
        texts = [t for t, _ in self.texts(prompts, responses)]
        return score_texts(self.model, self.tokenizer, texts, self.max_length, self.batch_size)

    def normalise(self, raw: list[float]) -> list[float]:
        return [(r - self.mean) / self.std for r in raw]

    def score(self, prompts, responses, segments):
        """One normalised value per response (its only segment is the whole response)."""
        return [[v] for v in self.normalise(self.score_texts(prompts, responses))]
