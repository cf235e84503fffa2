"""Data plumbing shared by the SFT, DPO and SimPO trainers: load, tokenise, split, order, collate, forward.

What it is
- ``load_preference_records(dataset)`` / ``load_sft_records(dataset)``: a data set name
  ("hh-rlhf", "qa-feedback", "demo") or a .jsonl path -> plain records, through the
  loaders of ``core.data`` (which raise ``DataError`` naming the file and record).
- ``tokenize_preferences`` / ``tokenize_sft``: prompt tokens truncated from the LEFT to
  ``max_prompt_length`` (the end of a dialogue matters most), responses end with EOS;
  an example whose prompt + response does not fit ``max_length`` is DROPPED, never cut,
  so that no response loses its ending (an empty result raises ``TrainingError``).
- ``split_examples``: a seeded, deterministic held-out split.
- ``batch_indices``: the data order as a pure function of (seed, step): a fresh seeded
  permutation per epoch, no state to save, so a resumed run sees exactly the batches an
  uninterrupted one would (and each DDP process takes its own slice of the global batch).
- ``collate_preferences``: chosen and rejected of B pairs stacked into ONE (2B, T) batch,
  LEFT-padded to the longest row of this batch only, rows [chosen_0..chosen_B-1,
  rejected_0..rejected_B-1], with explicit ``position_ids`` so padding never shifts them.
- ``completion_forward``: one forward pass that returns the per-token log-probs of the
  completion tokens only. Because every row ends at column T, the completions live in
  the last K columns, so the LM head is evaluated on those K+1 positions only
  (``logits_to_keep``) instead of all T: the (rows, T, V) logits tensor, the largest one
  in the step, shrinks to (rows, K+1, V). Log-probs go through ``selective_log_softmax``.

What it leaves out: packing several examples into one row (padding-free attention) and
multi-turn SFT losses (only the last assistant turn is trained).

    examples = tokenize_preferences(tokenizer, load_preference_records("demo"), max_length=256, max_prompt_length=128)
    batch = collate_preferences(examples[:4], tokenizer.pad_token_id)
    per_token_logps, mask = completion_forward(model, batch)      # (8, K), (8, K)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.trainers.common import TrainingError

PREFERENCE_DATASETS = ("hh-rlhf", "qa-feedback", "demo")
SFT_DATASETS = ("qa-feedback", "hh-rlhf", "demo")


# ----------------------------------------------------------------------------- loading records


def load_preference_records(dataset: str, limit: int | None = None) -> list[dict]:
    """{prompt, chosen, rejected} records of a named data set or a TRL-schema .jsonl file."""
    from core import data

    if dataset == "hh-rlhf":
        records = data.load_hh_rlhf(limit=limit)
    elif dataset == "qa-feedback":
        records = data.load_qa_feedback_preferences()
    elif dataset == "demo":
        records = data.load_demo_set().preferences
    elif Path(dataset).suffix == ".jsonl" or Path(dataset).is_file():
        if not Path(dataset).is_file():
            raise TrainingError(f"data file {dataset} not found; pass an existing .jsonl or one of {PREFERENCE_DATASETS}")
        records = data.load_preference_jsonl(dataset)
    else:
        raise TrainingError(f"unknown data set {dataset!r}: use one of {PREFERENCE_DATASETS} or a path to a .jsonl file")
    records = [dict(r) for r in records if {"prompt", "chosen", "rejected"} <= set(r)]
    return records[:limit] if limit else records


def _read_prompt_completion_jsonl(path: Path) -> list[dict]:
    from core.data import DataError

    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(path, i, f"not valid JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), (str, list)) \
                    or not isinstance(row.get("completion"), (str, list)):
                raise DataError(path, i, "needs 'prompt' and 'completion' (text or chat messages)")
            rows.append({"prompt": row["prompt"], "completion": row["completion"]})
    return rows


def qa_feedback_sft_records() -> list[dict]:
    """QA-Feedback sft.json: ``text`` (question + passages) -> ``answer`` (a JSON list of answers; the first is used)."""
    from core.data import DataError
    from core.paths import shared_data_dir

    path = shared_data_dir() / "qa_feedback" / "sft.json"
    if not path.is_file():
        raise TrainingError(f"{path} not found: place the real data in ../shared/data or set RLHF_WORKBENCH_DATA")
    rows = []
    for i, r in enumerate(json.loads(path.read_text())):
        answer = r.get("answer")
        if isinstance(answer, str) and answer.startswith("["):
            try:
                answer = json.loads(answer)
            except ValueError:
                pass
        if isinstance(answer, list):
            answer = answer[0] if answer else None
        if not isinstance(r.get("text"), str) or not isinstance(answer, str):
            raise DataError(path, i, "needs 'text' and 'answer'")
        rows.append({"prompt": r["text"], "completion": answer.strip()})  # the prompt of the QA-Feedback pairs
    return rows


def load_sft_records(dataset: str, limit: int | None = None) -> list[dict]:
    """{prompt, completion} records: QA-Feedback sft.json, a preference set's chosen responses, or a .jsonl.

    A .jsonl with ``completion`` fields is read as prompt/completion; one in the TRL
    preference schema gives its chosen responses.
    """
    path = Path(dataset)
    if dataset == "qa-feedback":
        records = qa_feedback_sft_records()
    elif dataset not in PREFERENCE_DATASETS and path.is_file():
        with open(path) as f:
            first = next((json.loads(line) for line in f if line.strip()), {})
        records = _read_prompt_completion_jsonl(path) if "completion" in first else [
            {"prompt": r["prompt"], "completion": r["chosen"]} for r in load_preference_records(dataset)]
    else:
        records = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in load_preference_records(dataset, limit)]
    return records[:limit] if limit else records


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


def _empty_error(kept: int, total: int, max_length: int, what: str) -> TrainingError:
    return TrainingError(
        f"the data set is empty after filtering by max_length={max_length} ({kept} of {total} {what} fit): "
        "raise max_length, lower max_prompt_length, or check that the data has non-empty responses"
    )


def tokenize_preferences(tokenizer, records, max_length: int, max_prompt_length: int) -> list[PreferenceExample]:
    """Tokenise {prompt, chosen, rejected} records; drop pairs that do not fit max_length or have an empty response."""
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
    if not out:
        raise _empty_error(0, len(records), max_length, "pairs")
    return out


def _has_text(r) -> bool:
    return bool(_message_text(r["chosen"]).strip()) and bool(_message_text(r["rejected"]).strip())


def tokenize_sft(tokenizer, records, max_length: int, max_prompt_length: int) -> list[SFTExample]:
    """Tokenise {prompt, completion} records; drop those that do not fit max_length or have an empty completion."""
    out = []
    for r in records:
        prompt_ids, completion_ids = encode_prompt_response(tokenizer, r["prompt"], r["completion"])
        prompt_ids = prompt_ids[-max_prompt_length:]
        if len(prompt_ids) + len(completion_ids) > max_length or not _message_text(r["completion"]).strip():
            continue
        out.append(SFTExample(prompt_ids, completion_ids, _message_text(r["prompt"]), _message_text(r["completion"])))
    if not out:
        raise _empty_error(0, len(records), max_length, "examples")
    return out


# ----------------------------------------------------------------------------- split and order


def split_examples(examples: list, eval_size: int, seed: int, train_size: int = 0) -> tuple[list, list]:
    """(train, held-out), grouped by prompt so no prompt is on both sides (QA-Feedback has 6 pairs per question).

    Prompts are shuffled with ``seed``; whole groups go to the held-out side until it has
    at least ``eval_size`` examples, then up to ``train_size`` (0: all) go to train.
    """
    import torch

    groups: dict[str, list] = {}
    for e in examples:
        groups.setdefault(e.prompt, []).append(e)
    keys = list(groups)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    train, held_out = [], []
    for k in order:
        side = held_out if len(held_out) < eval_size and len(keys) > 1 else train
        side.extend(groups[keys[k]])
    if not train:
        raise TrainingError(f"eval_size={eval_size} leaves no training examples out of {len(examples)}; lower eval_size")
    return (train[:train_size] if train_size else train), held_out


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

    from core.packing import positions_from_mask

    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, T - len(r):] = 1
    position_ids = positions_from_mask(attention_mask)  # 0 at each row's first real token
    return input_ids, attention_mask, position_ids


def _collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict:
    import torch

    input_ids, attention_mask, position_ids = _left_pad([p + c for p, c in zip(prompts, completions)], pad_id)
    lengths = torch.tensor([len(c) for c in completions])
    T = input_ids.shape[1]
    completion_mask = (torch.arange(T).unsqueeze(0) >= T - lengths.unsqueeze(1)).long()  # the last len(c) columns
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "completion_mask": completion_mask, "completion_lengths": lengths}


def collate_preferences(examples: list[PreferenceExample], pad_id: int) -> dict:
    """One (2B, T) batch: rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected, left-padded together.

    Returns input_ids, attention_mask, position_ids, completion_mask (2B, T) and
    completion_lengths (2B,).
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
    autocast = accelerator.autocast() if accelerator else _nullcontext()
    with torch.inference_mode(), autocast:
        for start in range(0, len(order), batch_size):
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


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- run plumbing shared by the trainers


def restore_checkpoint(folder, model, optimizer) -> None:
    """Trainable weights, optimizer state and RNG state of a checkpoint folder (call before accelerator.prepare)."""
    from core.checkpoint import load_optimizer_tensors, load_trainable_state_dict, set_rng_state

    load_trainable_state_dict(model, folder)
    load_optimizer_tensors(optimizer, folder)
    state = json.loads((Path(folder) / "trainer_state.json").read_text())
    if "rng" in state:
        set_rng_state(state["rng"])


def save_checkpoint(run, step: int, model, optimizer, keep: int = 2) -> None:
    """Trainable weights + optimizer + RNG state as ``checkpoints/step-N`` (main process only: run is None elsewhere)."""
    if run is None:
        return
    from core.checkpoint import rng_state, trainable_state_dict

    run.save_checkpoint(step, trainable_state_dict(model), optimizer=optimizer, state={"rng": rng_state()}, keep=keep)


def learning_rate_at(step: int, learning_rate: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant (a pure function of the step)."""
    return learning_rate * min(1.0, step / warmup_steps) if warmup_steps > 0 else learning_rate


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded on its own, for drawing per-token values."""
    return [tokenizer.decode([t]) for t in ids]


def train_only_last_layers(model, n_layers: int) -> None:
    """Freeze the LoRA adapters of all but the last ``n_layers`` transformer blocks (0: keep all trainable).

    Backpropagation then stops at the lowest trainable block, so a step costs a forward
    pass plus the backward pass of n_layers blocks only: the fast setting on a CPU.
    """
    import re

    if n_layers <= 0:
        return
    index = {n: int(m.group(1)) for n, _ in model.named_parameters() if (m := re.search(r"\.layers\.(\d+)\.", n))}
    if not index:
        raise TrainingError("lora_layers needs a model whose blocks are named '...layers.<i>...'; set lora_layers=0")
    first = max(index.values()) + 1 - n_layers
    for name, p in model.named_parameters():
        if p.requires_grad and index.get(name, first) < first:
            p.requires_grad_(False)
