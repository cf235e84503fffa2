"""Batching shared by the trainers (SFT, DPO, SimPO; PPO's batches): tokenise, split, order, collate, forward.

What it is
- ``tokenize_preferences`` / ``tokenize_sft``: prompt tokens truncated from the LEFT to
  ``max_prompt_length`` (the end of a dialogue matters most), responses end with EOS;
  an example whose prompt + response does not fit ``max_length`` is DROPPED, never cut,
  so that no response loses its ending. The result counts what it dropped (``.dropped``).
- ``train_eval_examples``: records -> (train, held-out) with ``core.data.split`` (grouped
  by prompt, so no prompt is on both sides), each side tokenised, and how many records
  each side lost to ``max_length`` as the metrics ``data/dropped_train`` / ``data/dropped_eval``.
- ``batch_indices``: the data order as a pure function of (seed, step): a fresh seeded
  permutation per epoch, no state to save, so a resumed run sees exactly the batches an
  uninterrupted one would (and each DDP process takes its own slice of the global batch).
- ``collate_preferences``: chosen and rejected of B pairs stacked into ONE (2B, T) batch,
  LEFT-padded to the longest row of this batch only, rows [chosen_0..chosen_B-1,
  rejected_0..rejected_B-1]; positions are derived from the mask where the model runs
  (``core.packing``), so padding never shifts them.
- ``completion_forward``: one forward pass that returns the per-token log-probs of the
  completion tokens only. Because every row ends at column T, the completions live in
  the last K columns, so the LM head is evaluated on those K+1 positions only
  (``logits_to_keep``) instead of all T: the (rows, T, V) logits tensor, the largest one
  in the step, shrinks to (rows, K+1, V). Log-probs go through ``selective_log_softmax``.
- PPO: ``iteration_generator`` (one seeded generator per iteration, so a resumed run draws
  the same prompts, minibatch order and ptx texts), ``iteration_prompts``, ``ptx_batch``.

What it leaves out: reading files (``core.data``), packing several examples into one row
for training (padding-free attention), multi-turn SFT losses (only the last assistant
turn is trained).

    from core.data import load_preference_records
    examples = tokenize_preferences(tokenizer, load_preference_records("demo"), max_length=256, max_prompt_length=128)
    batch = collate_preferences(examples[:4], tokenizer.pad_token_id)
    per_token_logps, mask = completion_forward(model, batch)      # (8, K), (8, K)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from core.trainers.common import TrainingError, progress


# ----------------------------------------------------------------------------- tokenisation


@dataclass
class PreferenceExample:
    """One tokenised pair. Token ids are lists of ints; texts are kept for samples."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt: str
    chosen: str
    rejected: str


@dataclass
class SFTExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    prompt: str
    completion: str


class Examples(list):
    """Tokenised examples, plus ``dropped``: how many input records did not fit max_length or had an empty response."""

    def __init__(self, items=(), dropped: int = 0):
        super().__init__(items)
        self.dropped = dropped


def _message_text(x) -> str:
    return x if isinstance(x, str) else "".join(m.get("content", "") for m in x)


def encode_prompt_response(tokenizer, prompt, response) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its response, tokenised separately (no merge across the boundary).

    Text: the prompt as is (with the tokenizer's special tokens, e.g. BOS) and the response
    followed by EOS; a response is joined to a prompt with one space when neither side has
    whitespace at the seam (HH-RLHF's "...Assistant:" + "Sure"), as in the running text. Chat messages (lists of {role, content}): the chat template with a
    generation prompt for the prompt; the response is what the template adds after it.
    """
    if isinstance(prompt, list):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        messages = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        full = tokenizer.apply_chat_template(prompt + messages, tokenize=False)
        response_text = full[len(prompt_text):] if full.startswith(prompt_text) else _message_text(messages)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    else:
        response = _message_text(response)
        if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
            response = " " + response
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not prompt_ids:  # a causal LM needs one token before the first predicted one
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return prompt_ids, response_ids


def tokenize_preferences(tokenizer, records, max_length: int, max_prompt_length: int) -> Examples:
    """Tokenise {prompt, chosen, rejected} records; drop (and count) pairs that do not fit max_length or have no response."""
    out = []
    for r in records:
        prompt_ids, chosen_ids = encode_prompt_response(tokenizer, r["prompt"], r["chosen"])
        _, rejected_ids = encode_prompt_response(tokenizer, r["prompt"], r["rejected"])
        prompt_ids = prompt_ids[-max_prompt_length:]  # keep the end of the prompt
        longest = max(len(chosen_ids), len(rejected_ids))
        if len(prompt_ids) + longest > max_length or not _has_text(r):
            continue
        out.append(PreferenceExample(prompt_ids, chosen_ids, rejected_ids,
                                     _message_text(r["prompt"]), _message_text(r["chosen"]), _message_text(r["rejected"])))
    return Examples(out, dropped=len(records) - len(out))


def _has_text(r) -> bool:
    return bool(_message_text(r["chosen"]).strip()) and bool(_message_text(r["rejected"]).strip())


def tokenize_sft(tokenizer, records, max_length: int, max_prompt_length: int) -> Examples:
    """Tokenise {prompt, completion} records; drop (and count) those that do not fit max_length or have an empty completion."""
    out = []
    for r in records:
        prompt_ids, completion_ids = encode_prompt_response(tokenizer, r["prompt"], r["completion"])
        prompt_ids = prompt_ids[-max_prompt_length:]
        if len(prompt_ids) + len(completion_ids) > max_length or not _message_text(r["completion"]).strip():
            continue
        out.append(SFTExample(prompt_ids, completion_ids, _message_text(r["prompt"]), _message_text(r["completion"])))
    return Examples(out, dropped=len(records) - len(out))


# ----------------------------------------------------------------------------- split and order


def train_eval_examples(tokenize, tokenizer, records: list[dict], config):
    """(train, held_out, dropped metrics): records split by prompt (``core.data.split``), then each side tokenised.

    tokenize: ``tokenize_preferences`` or ``tokenize_sft``; config: a trainer config with
    max_length, max_prompt_length, eval_size, seed and train_size. Whole prompts go to the
    held-out side until it has at least ``eval_size`` records, so no prompt is on both sides
    (QA-Feedback has 6 pairs per question); then up to ``train_size`` (0: all) tokenised
    examples train. What did not fit is counted per side: ``{"data/dropped_train": n,
    "data/dropped_eval": m}`` (core/metrics.py).
    """
    from core.data import split

    train_records, eval_records = split(records, eval_size=config.eval_size, seed=config.seed)
    if not train_records:
        raise TrainingError(f"eval_size={config.eval_size} leaves no training examples out of {len(records)}; lower eval_size")
    train, held_out = (tokenize(tokenizer, side, config.max_length, config.max_prompt_length)
                       for side in (train_records, eval_records))
    if not train:
        raise TrainingError(
            f"the data set is empty after filtering by max_length={config.max_length} (0 of {len(train_records)} training "
            "records fit): raise max_length, lower max_prompt_length, or check that the data has non-empty responses")
    if eval_records and not held_out:
        raise TrainingError(f"all {len(eval_records)} held-out records were dropped by max_length={config.max_length}: "
                            "raise max_length or eval_size")
    dropped = {"data/dropped_train": train.dropped, "data/dropped_eval": held_out.dropped}
    return (train[:config.train_size] if config.train_size else train), held_out, dropped


def batch_indices(n: int, seed: int, step: int, micro_step: int, batch_size: int, accumulation: int,
                  rank: int = 0, world: int = 1) -> list[int]:
    """Indices of the examples this process trains on in micro-batch ``micro_step`` of optimizer step ``step`` (1-based).

    The global stream of examples is epoch after epoch of ``randperm(n)`` seeded with
    (seed, epoch); optimizer step s consumes the slice of length batch_size * accumulation * world
    that starts at (s - 1) * that length, and process ``rank`` takes its own batch_size rows of
    each micro-batch. A pure function of its arguments: nothing to checkpoint.
    """
    import torch

    per_micro = batch_size * world
    start = ((step - 1) * accumulation + micro_step) * per_micro + rank * batch_size
    out, perms = [], {}
    for p in range(start, start + batch_size):
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        out.append(perms[epoch][p % n])
    return out


def epoch_at(step: int, n: int, batch_size: int, accumulation: int, world: int = 1) -> float:
    """Passes over the training data after ``step`` optimizer steps."""
    return step * batch_size * accumulation * world / n


# ----------------------------------------------------------------------------- collation


def _left_pad(rows: list[list[int]], pad_id: int):
    import torch

    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, T - len(r):] = 1
    return input_ids, attention_mask


def _collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict:
    import torch

    input_ids, attention_mask = _left_pad([p + c for p, c in zip(prompts, completions)], pad_id)
    lengths = torch.tensor([len(c) for c in completions])
    T = input_ids.shape[1]
    completion_mask = (torch.arange(T).unsqueeze(0) >= T - lengths.unsqueeze(1)).long()  # the last len(c) columns
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask, "completion_lengths": lengths}


def collate_preferences(examples: list[PreferenceExample], pad_id: int) -> dict:
    """One (2B, T) batch: rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected, left-padded together.

    Returns input_ids, attention_mask, completion_mask (2B, T) and completion_lengths (2B,).
    """
    prompts = [e.prompt_ids for e in examples] * 2
    completions = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    return _collate(prompts, completions, pad_id)


def collate_sft(examples: list[SFTExample], pad_id: int) -> dict:
    """One (B, T) batch of prompt+completion rows, left-padded; same keys as collate_preferences."""
    return _collate([e.prompt_ids for e in examples], [e.completion_ids for e in examples], pad_id)


# ----------------------------------------------------------------------------- forward


def completion_forward(model, batch: dict):
    """Per-token log-probs of the completion tokens in ONE forward pass over the whole (rows, T) batch.

    Returns (per_token_logps (rows, K), completion_mask (rows, K)) where K is the longest
    completion in the batch: column k of row b is the k-th of the last K columns of the
    input, 0 where the mask is 0. Logits are computed only at the K positions that predict
    completion tokens, and without the padding when the model allows it (``core.packing``).
    """
    from core.logprobs import selective_log_softmax
    from core.packing import packed_logits

    device = next(iter(p for p in model.parameters())).device
    input_ids = batch["input_ids"].to(device)
    K = int(batch["completion_lengths"].max())
    T = input_ids.shape[1]
    # logits[:, k] at column T-K-1+k predicts the token in column T-K+k (padding-free when the model allows it)
    logits = packed_logits(model, input_ids, batch["attention_mask"].to(device), T - K - 1, T - 1)  # (rows, K, V)
    per_token_logps = selective_log_softmax(logits, input_ids[:, -K:])  # (rows, K) fp32
    mask = batch["completion_mask"][:, -K:].to(device)
    return per_token_logps.masked_fill(mask == 0, 0.0), mask


def row_values(per_token, lengths) -> list[list[float]]:
    """Per-row lists of the last ``lengths[b]`` columns of a (rows, K) tensor (each completion's own tokens)."""
    K = per_token.shape[1]
    return [per_token[b, K - int(n):].tolist() for b, n in enumerate(lengths)]


def pair_logps(model, examples: list[PreferenceExample], batch_size: int, pad_id: int, accelerator=None, keep=()):
    """Summed log-probs of every pair's chosen and rejected response, no gradient.

    Batches are formed in order of length (less padding; nothing is learned here, so the
    order changes no result) and, under DDP, each process scores its own share.
    Returns (chosen (N,), rejected (N,), per_token) where per_token[i] = (chosen token
    log-probs, rejected token log-probs) for each i in ``keep``.
    """
    import torch

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + max(
        len(examples[i].chosen_ids), len(examples[i].rejected_ids)))[rank::world]
    rows, keep = [], set(keep)
    autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for start in progress(range(0, len(order), batch_size)):  # the caller's phase, e.g. "reference pass 3/40"
            idx = order[start:start + batch_size]
            batch = collate_preferences([examples[i] for i in idx], pad_id)
            per_token, _ = completion_forward(model, batch)  # (2b, K)
            sums = per_token.sum(-1).float().cpu()
            lengths = batch["completion_lengths"]
            b = len(idx)
            for j, i in enumerate(idx):
                tokens = None
                if i in keep:
                    tokens = (row_values(per_token[j:j + 1].cpu(), lengths[j:j + 1])[0],
                              row_values(per_token[b + j:b + j + 1].cpu(), lengths[b + j:b + j + 1])[0])
                rows.append((i, float(sums[j]), float(sums[b + j]), tokens))
    if world > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    rows.sort(key=lambda r: r[0])
    chosen = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    rejected = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    return chosen, rejected, {r[0]: r[3] for r in rows if r[3] is not None}


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded on its own, for drawing per-token values."""
    return [tokenizer.decode([t]) for t in ids]


# ---------------------------------------------------------------------------- PPO batches


def iteration_generator(seed: int, iteration: int, process_index: int = 0) -> "torch.Generator":
    """The generator of one PPO iteration: its prompt batch, minibatch order and ptx texts (resumes see the same)."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + iteration * 1009 + process_index)


def iteration_prompts(train_prompts: list[str], batch_size: int, g) -> list[str]:
    """The batch_size prompts of one iteration: a random permutation of the training prompts (cycled if fewer)."""
    import torch

    order = torch.randperm(len(train_prompts), generator=g)
    return [train_prompts[order[j % len(order)]] for j in range(batch_size)]


def ptx_batch(tokenizer, texts: list[str], n: int, max_tokens: int, generator, device):
    """n random texts, right-padded: (ids (n, L), mask (n, L)) with mask 0 on the first token (nothing predicts it)."""
    import torch

    pick = torch.randint(len(texts), (n,), generator=generator).tolist()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    enc = tokenizer([texts[i] for i in pick], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
    tokenizer.padding_side = side
    mask = enc["attention_mask"].clone()
    mask[:, 0] = 0
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), mask.to(device)
