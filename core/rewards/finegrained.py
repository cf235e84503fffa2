"""Fine-grained reward models C1 (relevance) and C2 (factuality) as reward components.

Paper: Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards for Language
Model Training" (sec. 3.2, Appendix D; code allenai/FineGrainedRLHF). Each error
category has its own reward model, a token classifier that judges every segment at
the token where the segment ends:

    C1  irrelevance, repetition, incoherence   one judgement per SUB-SENTENCE
    C2  incorrect or unverifiable facts        one judgement per SENTENCE
    C3  incompleteness                         a preference RM (core.trainers.reward, dataset="qa-feedback")

and the reward of segment j of category k, placed on its last token (eq. 1), is

    r^k_j = +positive_reward   if the RM says segment j is clean   (P(error) < threshold)
            negative_reward    otherwise

(upstream ``SubSentenceVerbosityReward`` / ``FactualityReward``: argmax over the
classes, +1 / -1 by default; their PPO config then scales C1 by 0.3 and C2 by 0.5,
which here are the trainer's component weights).

Labels from the human spans of QA-Feedback (``core.data.load_qa_feedback_spans``):
a segment (``core.rewards.segments``) is erroneous (label 1) when it overlaps, by at
least one character, a human span of that category; otherwise it is clean (0).
RM input, as upstream: C1 reads ``question: Q answer: Y`` (no passages), C2 reads the
full prompt with the Wikipedia passages then `` answer: Y`` (facts are checked against them),
its passages cut in the middle when the whole does not fit max_length, never the question.

Deviations: upstream fine-tunes Longformer-base (bidirectional) with a ``</s>`` inserted
before each segment and predicts at those markers; we read a causal backbone
(SmolLM2-135M by default) at the segment's own last token, so a segment is judged from
the text up to its end only.

What it leaves out: training (``core.trainers.finegrained``), saving and finding models
(``core.rewards.store``), C3 (see above), upstream's 3-class C2 head (we use 2 classes:
error / no error), spaCy sentence splitting (pysbd, see ``segments``).

    python -m core.trainers.finegrained --category C1          # train and save c1-relevance
    rm = load_reward_component(cache_dir() / "reward_models" / "c1-relevance")   # FineGrainedReward
"""

from __future__ import annotations

import torch
from transformers import AutoModelForTokenClassification

from core.devices import default_dtype, pick_device
from core.models import resolve_model
from core.rewards.align import char_to_token_index
from core.rewards.preference_rm import backbone_and_head, encode, fit_passages, format_pair, hidden_states
from core.rewards.segments import segment_spans

CATEGORIES = {
    "C1": {"level": "subsentence", "name": "c1_relevance", "input": "question"},
    "C2": {"level": "sentence", "name": "c2_factuality", "input": "prompt"},
}
SEPARATOR = " answer: "


# ----------------------------------------------------------------------------- labels


def segment_labels(response: str, spans: list[dict], category: str) -> list[tuple[tuple[int, int], int]]:
    """[((start, end), label)] for every segment of ``response`` at the category's level.

    spans: human error spans ``{start, end, category}`` (as from ``load_qa_feedback_spans``).
    label 1 when the segment shares at least one character with a span of ``category``.
    """
    level = CATEGORIES[category]["level"]
    marked = [(s["start"], s["end"]) for s in spans if s["category"] == category]
    return [((a, b), int(any(s < b and a < e for s, e in marked))) for a, b in segment_spans(response, level)]


def rm_prefix(prompt: str, category: str, tokenizer=None, response: str = "", max_length: int = 0) -> str:
    """What the category's RM reads before the answer: the question alone (C1) or the whole prompt (C2).

    With a tokenizer and max_length, a C2 prompt's passages are cut in the middle so that the
    question and the answer always fit (``preference_rm.fit_passages``)."""
    if CATEGORIES[category]["input"] == "question":
        return prompt.split(" context: ")[0]  # "question: Q" from the QA-Feedback prompt
    if tokenizer is not None and max_length:
        return fit_passages(tokenizer, prompt, response, max_length, SEPARATOR)[0]
    return prompt


# ----------------------------------------------------------------------------- model helpers


def load_token_classifier(name_or_path: str, device=None):
    """A 2-class token classifier (0 clean, 1 error) on any backbone, fp32 on CPU / bf16 on CUDA."""
    device = pick_device(device)
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model(name_or_path), num_labels=2, dtype=default_dtype(device), use_safetensors=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device).eval()


def segment_end_states(model, tokenizer, texts: list[str], starts: list[int], segments: list[list[tuple[int, int]]],
                       max_length: int, device) -> list[torch.Tensor]:
    """Hidden states (n_segments, H) at the RM token holding each segment's last character.

    texts[b]: the RM input; starts[b]: where the response starts in it; segments[b]:
    (start, end) spans into the response. One batched forward pass (keeps the graph
    when grad is enabled, for fine-tuning).
    """
    enc = encode(tokenizer, texts, max_length)
    hidden = hidden_states(model, enc["input_ids"].to(device), enc["attention_mask"].to(device))  # (B, T, H)
    out = []
    for b, segs in enumerate(segments):
        spans = [tuple(o) for o in enc["offset_mapping"][b].tolist()]
        spans = [(s, e) if m else (0, 0) for (s, e), m in zip(spans, enc["attention_mask"][b].tolist())]
        first = int(enc["attention_mask"][b].nonzero()[0])
        idx = [_token_at(spans, starts[b] + e, first) for _, e in segs]
        out.append(hidden[b, idx])
    return out


def _token_at(spans, char_end: int, first: int) -> int:
    """The token holding character char_end - 1, or the first kept token when truncation cut that far."""
    try:
        return char_to_token_index(spans, char_end)
    except ValueError:
        return first


# ----------------------------------------------------------------------------- reward component


class FineGrainedReward:
    """A trained C1/C2 RM as a ``RewardComponent``: +positive / negative reward per segment.

    Built by ``core.rewards.store.load_reward_component`` from a saved folder (model,
    tokenizer and its ``workbench_reward.json`` meta).
    """

    def __init__(self, model, tokenizer, meta: dict, name: str | None = None, batch_size: int = 4):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, dict(meta)
        self.category = meta["category"]
        self.level = meta.get("level", CATEGORIES[self.category]["level"])
        self.name = name or meta.get("name", CATEGORIES[self.category]["name"])
        self.max_length = int(meta.get("max_length", 1024))
        self.batch_size = batch_size

    def _fit(self, response: str) -> tuple:
        """(tokenizer, response, max_length) for rm_prefix when the model was trained with passages cut in the middle."""
        return (self.tokenizer, response, self.max_length) if self.meta.get("trim_passages") else ()

    @torch.no_grad()
    def error_probabilities(self, prompts: list[str], responses: list[str], segments) -> list[list[float]]:
        """P(error) for every segment of every response."""
        _, head = backbone_and_head(self.model)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            items = [(format_pair(None, rm_prefix(p, self.category, *self._fit(r)), r, "text", self.meta.get("separator", SEPARATOR)), segs)
                     for p, r, segs in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size],
                                           segments[i : i + self.batch_size])]
            todo = [k for k, (_, segs) in enumerate(items) if segs]
            probs = {}
            if todo:
                states = segment_end_states(self.model, self.tokenizer, [items[k][0][0] for k in todo],
                                            [items[k][0][1] for k in todo], [items[k][1] for k in todo], self.max_length, device)
                for k, h in zip(todo, states):
                    probs[k] = head(h).float().softmax(-1)[:, 1].cpu().tolist()
            out += [probs.get(k, []) for k in range(len(items))]
        return out

    def score(self, prompts, responses, segments):
        pos, neg = float(self.meta.get("positive_reward", 1.0)), float(self.meta.get("negative_reward", -1.0))
        thr = float(self.meta.get("threshold", 0.5))
        return [[neg if p >= thr else pos for p in row] for row in self.error_probabilities(prompts, responses, segments)]
