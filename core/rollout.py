"""Rollouts for language models: prompt formatting, KV-cached sampling, then one scoring pass per model.

What it is: phase 1 of `core.trainers.ppo`, the sampler of `core.evaluation`, and what
the token explorer page samples with (one path, so all three see the same prompt text).

    rollout = generate(policy, tokenizer, prompts, max_new_tokens=24, temperature=1.0, chat_template=True)
    old = score_tokens(model, rollout, temperature, with_entropy=True, no_grad=True)   # logprobs, values, entropy
    with reference() as ref:
        rollout.ref_logprobs = score_tokens(ref, rollout, temperature, with_values=False, no_grad=True).logprobs

Prompts are raw text. With ``chat_template=True`` and a tokenizer that has a chat
template (instruct models such as SmolLM2-Instruct), each prompt becomes one user turn
followed by the assistant header (``format_prompts``): the form the model was tuned to
answer. Otherwise the policy continues the raw text (a base model, or
RealToxicityPrompts-style continuation). ``Rollout.prompts`` keeps the raw prompts (what
rewards and logs see); ``query_ids`` hold the formatted ones.

Layout of one batch (B rows, P prompt columns, R response columns):

    [pad pad prompt prompt | resp resp EOS pad pad]       query: left-padded (P)
                                                           response: right-padded (R)
    query_mask    (B, P)  1 on prompt tokens
    response_mask (B, R)  1 on response tokens up to AND including the first EOS;
                          everything after the first EOS is masked
    ended         (B,)    True when the response contains an EOS; a response cut at
                          max_new_tokens is kept (it still trains) and flagged False

Why it is shaped like this:
- sampling is `model.generate(..., use_cache=True)`: each new token costs one forward
  of one position (KV cache), not of the whole sequence; the token is drawn by
  `core.sampling` (temperature, top-k, top-p from a few hundred candidates: the same
  distribution as transformers' sampler without sorting the vocabulary);
- log-probs and values are NOT collected during generation (generate's scores are of
  the processed, top-k/top-p-filtered distribution, and the value head is not run
  there); they come from exactly one forward pass over (prompt, response) after it,
  the same function the update uses, so the first PPO ratio is exactly 1 (with dropout
  off: ``core.models.disable_dropout``);
- R is the longest response in the batch: generate stops when every row has hit EOS,
  and all-masked trailing columns are cut.
- the log-probs are those of the sampling distribution softmax(logits / temperature)
  (TRL does the same); top-k / top-p are ignored there.

What it leaves out: vLLM-style paged generation, multi-turn prompts (a prompt is one
user turn), position ids for models with absolute position embeddings (left padding
shifts absolute positions; RoPE models such as Llama/SmolLM2 are unaffected because
attention sees only relative ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from core.logprobs import completion_logprobs, entropy_from_logits, selective_log_softmax
from core.packing import packed_logits


@dataclass
class Rollout:
    """One batch of sampled responses and the per-token quantities PPO needs. Shapes in the module docstring."""

    prompts: list[str]
    query_ids: torch.Tensor  # (B, P) left-padded
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R) right-padded
    response_mask: torch.Tensor  # (B, R) up to and including the first EOS
    ended: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor | None = None  # (B, R) log pi_old(y_t | ...)
    ref_logprobs: torch.Tensor | None = None  # (B, R) log pi_ref(y_t | ...)
    values: torch.Tensor | None = None  # (B, R) V(s_t), s_t = prompt + y_<t
    entropy: torch.Tensor | None = None  # (B, R)
    extra: dict = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + R)
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + R)
        return torch.cat([self.query_mask, self.response_mask.to(self.query_mask.dtype)], dim=1)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def rows(self, index) -> "Rollout":
        """The sub-batch of rows `index` (a slice or a LongTensor), every tensor sliced alike."""
        if isinstance(index, slice):
            prompts = self.prompts[index]
        else:
            prompts = [self.prompts[i] for i in index.tolist()]
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Rollout(prompts, self.query_ids[index], self.query_mask[index], self.response_ids[index],
                       self.response_mask[index], self.ended[index], pick(self.logprobs), pick(self.ref_logprobs),
                       pick(self.values), pick(self.entropy), {k: pick(v) for k, v in self.extra.items()})


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS plus the model's generation_config EOS id(s)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return sorted(i for i in ids if i is not None)


def mask_after_eos(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(response_mask (B, R) long, ended (B,) bool): 1 up to and including the first EOS, 0 after it.

    A token is kept when no EOS occurs strictly before it, so the EOS itself is a
    response token (the sequence-level reward sits on it) and nothing after it is.
    """
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))  # (B, R)
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS count strictly before t
    response_mask = (eos_before == 0).long()
    return response_mask, is_eos.any(dim=1)


def uses_chat_template(tokenizer, chat_template: bool = True) -> bool:
    """Whether prompts are formatted as a chat turn: asked for, and the tokenizer has a template."""
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def format_prompts(tokenizer, prompts: list[str], *, chat_template: bool = True,
                   max_prompt_tokens: int | None = None) -> list[str]:
    """The text the policy continues for each raw prompt.

    With a chat template (``uses_chat_template``): the prompt as one user turn plus the
    assistant header, e.g. for SmolLM2-Instruct
    ``<|im_start|>system ... <|im_end|> <|im_start|>user PROMPT<|im_end|> <|im_start|>assistant``;
    the raw prompt is first cut to its LAST max_prompt_tokens tokens, so the template
    itself is never cut. Without one: the prompts unchanged (``encode_prompts`` cuts them).
    """
    if not uses_chat_template(tokenizer, chat_template):
        return list(prompts)
    out = []
    for prompt in prompts:
        if max_prompt_tokens is not None:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_tokens:
                prompt = tokenizer.decode(ids[len(ids) - max_prompt_tokens:])
        out.append(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True))
    return out


def encode_prompts(tokenizer, prompts: list[str], *, chat_template: bool = False,
                   max_prompt_tokens: int | None = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(query_ids (B, P), query_mask (B, P)), left-padded: the formatted prompts (``format_prompts``).

    Raw prompts longer than max_prompt_tokens keep their LAST tokens (None: no limit).
    No special tokens are added: a chat template writes its own.
    """
    templated = uses_chat_template(tokenizer, chat_template)
    texts = format_prompts(tokenizer, prompts, chat_template=chat_template, max_prompt_tokens=max_prompt_tokens)
    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        cut = not templated and max_prompt_tokens is not None
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=cut,
                        max_length=max_prompt_tokens if cut else None, add_special_tokens=False)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def generate(policy, tokenizer, prompts: list[str], *, max_new_tokens: int = 24, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, max_prompt_tokens: int | None = 64, min_new_tokens: int = 0,
             chat_template: bool = False, device=None, generator=None) -> Rollout:
    """Sample one response per raw prompt with the KV cache; returns a Rollout without log-probs.

    The global torch RNG (and the device's) drives sampling: seed it for reproducible rollouts;
    or pass ``generator`` (a ``torch.Generator`` on the policy's device): every token is then
    drawn from it and the global RNG state is left as it was. temperature 0: greedy (argmax).
    chat_template: format each prompt as a user turn when the tokenizer has a template
    (``format_prompts``); False continues the raw text. Prompts longer than
    max_prompt_tokens keep their LAST tokens. min_new_tokens: EOS is suppressed until a
    response has that many tokens (generate's MinNewTokensLogitsProcessor).
    """
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    device = device or next(policy.parameters()).device
    query_ids, query_mask = encode_prompts(tokenizer, list(prompts), chat_template=chat_template,
                                           max_prompt_tokens=max_prompt_tokens)
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    eos = eos_token_ids(tokenizer, policy)
    from transformers import LogitsProcessorList

    from core.sampling import SamplingProcessor

    was_training = policy.training
    policy.eval()
    draw = [] if temperature == 0 else [SamplingProcessor(temperature, top_k, top_p, generator=generator)]
    sequences = policy.generate(  # generate's loop and KV cache; the draw is core.sampling's (same distribution, no sort)
        input_ids=query_ids, attention_mask=query_mask, max_new_tokens=max_new_tokens, do_sample=False,
        logits_processor=LogitsProcessorList(draw), use_cache=True,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, min_new_tokens=min_new_tokens or None,
    )  # (B, P + R')
    policy.train(was_training)
    response_ids = sequences[:, query_ids.shape[1]:]  # (B, R')
    response_mask, ended = mask_after_eos(response_ids, eos)
    R = int(response_mask.sum(1).max())  # pad only to the longest response
    response_ids, response_mask = response_ids[:, :R], response_mask[:, :R]
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, tokenizer.pad_token_id))
    return Rollout(list(prompts), query_ids, query_mask, response_ids.contiguous(), response_mask, ended)


def response_texts(tokenizer, rollout: Rollout) -> list[str]:
    """The decoded responses (tokens under response_mask, special tokens such as EOS left out)."""
    return [tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for ids, mask in zip(rollout.response_ids, rollout.response_mask)]


class TokenScores(NamedTuple):
    logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor | None  # (B, R)
    entropy: torch.Tensor | None  # (B, R)
    ptx_logprobs: torch.Tensor | None  # (N, L) per-token log-probs of the ptx rows
    raw_logprobs: torch.Tensor | None = None  # (B, R) log-probs at temperature 1 (with_raw), e.g. for perplexity


def score_tokens(model, rollout: Rollout, temperature: float = 1.0, *, with_values: bool = True,
                 with_entropy: bool = False, no_grad: bool = False, ptx=None, with_raw: bool = False) -> TokenScores:
    """One forward pass over (prompt, response): per-token log-probs, values and entropies of the response.

    model: called as model(input_ids, attention_mask, start, stop) -> (logits, values) at
    columns [start, stop) when with_values (`CausalLMWithValueHead` / `PolicyWithValue`),
    else a plain causal LM (run through `core.packing.packed_logits`). Only the R columns
    that predict response tokens get logits (lm_head and softmax skip the prompt), and the
    pass is padding-free when the model allows it (`core.packing`).
    Logits at column P-1+t predict response token t; the value read at the same column
    is V(s_t) of the state before token t. Every (B, R) output is 0 outside response_mask.
    ptx: optional (ids (N, L), attention_mask (N, L), loss_mask (N, L)) of pretraining
    text, appended as extra rows of the SAME forward pass (one forward and one backward
    per step, which DDP requires); their log-probs use temperature 1.
    with_raw: also the response's log-probs at temperature 1 from the same logits (``raw_logprobs``).
    """
    context = torch.inference_mode() if no_grad else torch.enable_grad()
    with context:
        input_ids, attention_mask = rollout.input_ids, rollout.attention_mask
        B, P = rollout.query_ids.shape
        if ptx is not None:
            input_ids, attention_mask = _stack_right_padded([input_ids, ptx[0]], [attention_mask, ptx[1]])
        R = rollout.response_ids.shape[1]
        # only the columns whose logits predict response tokens (all of them when ptx rows ride along)
        start, stop = (P - 1, P - 1 + R) if ptx is None else (0, input_ids.shape[1])
        if with_values:
            logits, values = model(input_ids, attention_mask, start, stop)  # (B', W, V), (B', W)
            values = values[:B, P - 1 - start:P - 1 - start + R].float()  # (B, R)
        else:
            logits, values = packed_logits(model, input_ids, attention_mask, start, stop), None
        ptx_logprobs = None
        if ptx is not None:
            L = ptx[0].shape[1]
            ptx_logprobs = completion_logprobs(logits[B:, :L], ptx[0], ptx[2])  # (N, L)
        logits = logits[:B, P - 1 - start:P - 1 - start + R]  # (B, R, V)
        mask = rollout.response_mask.bool()
        raw_logprobs = None
        if with_raw:
            raw_logprobs = torch.where(mask, selective_log_softmax(logits, rollout.response_ids), 0.0)  # (B, R)
        logits = logits / temperature
        logprobs = selective_log_softmax(logits, rollout.response_ids)  # (B, R)
        logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = torch.where(mask, entropy_from_logits(logits.detach()), torch.zeros_like(logprobs))
        if values is not None:
            values = torch.where(mask, values, torch.zeros_like(values))
    return TokenScores(logprobs, values, entropy, ptx_logprobs, raw_logprobs)


def _stack_right_padded(ids_list, mask_list):
    """Stack (B_i, T_i) id/mask tensors into (sum B_i, max T_i), right-padding with masked zeros."""
    T = max(t.shape[1] for t in ids_list)
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.shape[1]))  # noqa: E731
    return torch.cat([pad(t) for t in ids_list]), torch.cat([pad(m) for m in mask_list])
