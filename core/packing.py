"""Padding-free forward passes: the real tokens of a padded batch packed into one row.

What it is: a padded batch (B, T) spends compute on every pad position. On HH-RLHF pairs
at max length 256, about 36 % of a DPO or reward-model batch is padding; in a PPO batch of
left-padded prompts, about 28 %. Here the attended tokens of all rows are laid end to end in
one row, each sequence's ``position_ids`` restarting at 0, and attention is computed for each
sequence on its own (``_segment_attention``, registered with transformers' AttentionInterface;
plain sdpa outside packed passes). Every output equals the padded pass's up to float rounding
(the tests check it against the padded forward), and no pad position is computed. This is
TRL's ``padding_free`` idea, which TRL only enables with flash attention; with flash attention
transformers handles the packed row itself (variable-length kernels), with eager it builds a
dense block-diagonal mask (rows then capped at ``MAX_ROW_TOKENS``).

    logits = packed_logits(model, input_ids, attention_mask, start, stop)   # (B, stop - start, V)
    logits, values = windowed_outputs(policy, input_ids, attention_mask, start, stop, value_head=head)
    hidden = decoder_hidden_states(decoder, input_ids, attention_mask)      # (B, T, H), 0 at pads

Why per-sequence attention: a dense block mask over the packed row costs O(N^2) for N packed
tokens, about what the padding cost (bench/where_time_goes.py); one sdpa per sequence costs
sum_b T_b^2, less than the padded batch.

What it leaves out: architectures whose attention is not plain causal over rotary positions
(soft-capping, sliding windows, absolute positions built outside masking_utils): packing is
used only for the decoder families in ``PACKABLE_MODEL_TYPES`` and the padded pass otherwise;
a past KV cache (packing is for training and scoring passes, never for ``generate``).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# decoder families with rotary positions and plain causal attention (no soft-capping, no sliding window by default)
PACKABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "olmo", "olmo2", "granite"})
PACKABLE_ATTENTION = frozenset({"sdpa", "eager", "flash_attention_2", "flash_attention_3", "workbench_segment_sdpa"})
SEGMENT_ATTENTION = "workbench_segment_sdpa"
MAX_ROW_TOKENS = 4096  # rows of a dense block mask (eager); segment attention and flash attention need no cap
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("workbench_packing", default=None)


def can_pack(model) -> bool:
    """True when ``model``'s decoder honours packed ``position_ids`` (see ``PACKABLE_MODEL_TYPES``)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (getattr(text_config, "model_type", None) in PACKABLE_MODEL_TYPES
            and not getattr(text_config, "use_sliding_window", False)
            and getattr(config, "_attn_implementation", "sdpa") in PACKABLE_ATTENTION)


def _segment_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Attention for transformers' AttentionInterface: sdpa, except inside a packed pass, where each packed
    sequence attends causally to itself only, one ``scaled_dot_product_attention`` per sequence.

    That costs sum_b T_b^2 like the padded batch without its pad rows, where a dense block mask over the packed
    row would cost N^2 (measured: 2.5 s against 0.9 s of attention for 24 HH pairs). query (R, H, N, d), key and
    value (R, H_kv, N, d); returns ((R, N, H, d), None) as transformers' sdpa_attention_forward does.
    """
    packing = _ACTIVE.get()
    if packing is None or query.shape[2] != packing.input_ids.shape[1] or query.shape[0] != packing.input_ids.shape[0]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = key.shape[1] != query.shape[1]
    p = dropout if module.training else 0.0
    rows = []
    for r, segments in enumerate(packing.segments):
        rows.append(torch.cat([
            torch.nn.functional.scaled_dot_product_attention(
                query[r:r + 1, :, s:s + n], key[r:r + 1, :, s:s + n], value[r:r + 1, :, s:s + n],
                dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
            for s, n in segments], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _segment_mask(*args, **kwargs):
    """No mask inside a packed pass (``_segment_attention`` needs none); transformers' sdpa mask otherwise."""
    return None if _ACTIVE.get() is not None else sdpa_mask(*args, **kwargs)


def use_segment_attention(model) -> None:
    """Switch an sdpa model to ``SEGMENT_ATTENTION`` (idempotent). Outside packed passes (e.g. ``generate``) it
    IS sdpa, so the switch changes no result anywhere; it is never switched back, so no other thread can see a
    half-switched model."""
    if SEGMENT_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(SEGMENT_ATTENTION, _segment_attention)
        AttentionMaskInterface.register(SEGMENT_ATTENTION, _segment_mask)
    config = model.config
    if getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = SEGMENT_ATTENTION


@contextlib.contextmanager
def packed_pass(model, packing: "Packing"):
    use_segment_attention(model)
    token = _ACTIVE.set(packing)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def row_cap(model) -> int:
    return MAX_ROW_TOKENS if getattr(model.config, "_attn_implementation", "sdpa") == "eager" else 1 << 30


@dataclass
class Packing:
    """Where every attended token of a (B, T) batch sits in the packed (R, N) rows."""

    input_ids: torch.Tensor  # (R, N) packed tokens (0 in the tail of a row that is not full)
    position_ids: torch.Tensor  # (R, N) restarting at 0 at each sequence (and at each row's tail)
    mask: torch.Tensor  # (B, T) bool: the source attention mask
    rows: torch.Tensor  # (M,) packed row of the m-th attended token, in row-major order of `mask`
    cols: torch.Tensor  # (M,) packed column of the same token
    segments: list = field(default_factory=list)  # per packed row: (start, length) of each sequence, tail included

    @classmethod
    def of(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_row_tokens: int | None = None) -> "Packing":
        """Pack the attended tokens of each row into rows of <= max_row_tokens (first-fit decreasing)."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must both be (B, T)")
        max_row_tokens = max_row_tokens or MAX_ROW_TOKENS
        mask = attention_mask.bool()
        lengths = mask.sum(1).tolist()
        # first-fit decreasing: longest sequences first, each into the first row with room
        row_of, start_of, row_len = [0] * len(lengths), [0] * len(lengths), []
        for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            n = lengths[b]
            r = next((r for r, used in enumerate(row_len) if used + n <= max_row_tokens), None)
            if r is None:
                row_len.append(0)
                r = len(row_len) - 1
            row_of[b], start_of[b] = r, row_len[r]
            row_len[r] += n
        device = input_ids.device
        N = max(row_len)
        packed = torch.zeros(len(row_len), N, dtype=input_ids.dtype, device=device)
        positions = torch.zeros(len(row_len), N, dtype=torch.long, device=device)
        rows, cols, segments = [], [], [[] for _ in row_len]
        for b, (n, r, s) in enumerate(zip(lengths, row_of, start_of)):
            if n == 0:
                continue
            packed[r, s:s + n] = input_ids[b][mask[b]]
            positions[r, s:s + n] = torch.arange(n, device=device)
            rows.append(torch.full((n,), r, device=device))
            cols.append(torch.arange(s, s + n, device=device))
            segments[r].append((s, n))
        for r, used in enumerate(row_len):
            segments[r].sort()
            if used < N:  # the row's tail: pad tokens, a "sequence" of their own from position 0
                positions[r, used:] = torch.arange(N - used, device=device)
                segments[r].append((used, N - used))
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return cls(packed, positions, mask, torch.cat(rows) if rows else empty, torch.cat(cols) if cols else empty,
                   segments)

    def model_inputs(self) -> dict:
        """Keyword arguments of the packed forward: ids and positions, NO attention mask, no cache."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}

    def unpack(self, packed: torch.Tensor, start: int = 0, stop: int | None = None,
               kept_columns: torch.Tensor | None = None) -> torch.Tensor:
        """(R, N', ...) packed outputs -> (B, stop - start, ...) at padded columns [start, stop), 0 elsewhere.

        kept_columns: when the packed outputs hold only some packed columns (``logits_to_keep``
        given as indices, see ``window_columns``), the packed column of each of them.
        Differentiable (index + index_put).
        """
        B, T = self.mask.shape
        stop = T if stop is None else stop
        window = torch.zeros_like(self.mask)
        window[:, start:stop] = True
        select = window[self.mask]  # (M,) the attended tokens that fall in the window
        rows, cols = self.rows[select], self.cols[select]
        if kept_columns is not None:
            where = torch.full((int(self.input_ids.shape[1]),), -1, dtype=torch.long, device=cols.device)
            where[kept_columns] = torch.arange(len(kept_columns), device=cols.device)
            cols = where[cols]
        out = packed.new_zeros(B, stop - start, *packed.shape[2:])
        target = (self.mask & window)[:, start:stop]
        out[target] = packed[rows, cols]
        return out

    def window_columns(self, start: int, stop: int) -> torch.Tensor:
        """Sorted packed columns holding the attended tokens of padded columns [start, stop) (any row)."""
        window = torch.zeros_like(self.mask)
        window[:, start:stop] = True
        return torch.unique(self.cols[window[self.mask]])


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids counted from each row's first attended token, so left padding shifts nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_hidden_states(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, pack: bool = True) -> torch.Tensor:
    """Last hidden states (B, T, H) of a decoder (e.g. ``LlamaModel``), padding-free when it can be.

    Falls back to the padded pass with ``positions_from_mask``. Positions outside the mask
    are 0 when packed and unspecified otherwise; read only attended positions.
    """
    if pack and can_pack(decoder):
        packing = Packing.of(input_ids, attention_mask, row_cap(decoder))
        with packed_pass(decoder, packing):
            return packing.unpack(decoder(**packing.model_inputs()).last_hidden_state)
    return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask),
                   use_cache=False).last_hidden_state


def windowed_outputs(policy, input_ids, attention_mask, start: int, stop: int, value_head=None, critic=None,
                     *, pack: bool = True):
    """Logits of a causal LM ``policy`` (and values) at padded columns [start, stop), one pass per model.

    Goes through ``policy.forward`` (so DDP / accelerate wrappers see the call) with
    ``logits_to_keep`` restricted to the window, padding-free when the models allow it.
    value_head: a head on the policy's last hidden state (shared backbone); critic: a separate
    scalar-head model (``AutoModelForSequenceClassification``) read at every position. Returns
    (logits (B, W, V), values (B, W) or None), W = stop - start; 0 at unattended positions when packed.
    """
    base = getattr(policy, "module", policy)  # DDP
    want_hidden = value_head is not None
    if pack and can_pack(base) and (critic is None or can_pack(critic)):
        packing = Packing.of(input_ids, attention_mask, row_cap(base))
        keep = packing.window_columns(start, stop)
        with packed_pass(base, packing):
            out = policy(**packing.model_inputs(), logits_to_keep=keep, output_hidden_states=want_hidden)
        logits = packing.unpack(out.logits, start, stop, kept_columns=keep)  # (B, W, V)
        values = None
        if value_head is not None:
            values = value_head(packing.unpack(out.hidden_states[-1], start, stop)).squeeze(-1)  # (B, W)
        elif critic is not None:
            with packed_pass(critic, packing):
                hidden = critic(**packing.model_inputs(), output_hidden_states=True).hidden_states[-1]
            values = critic.score(packing.unpack(hidden, start, stop)).squeeze(-1)
        return logits, values
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask),
              use_cache=False)
    out = policy(**kw, logits_to_keep=input_ids.shape[1] - start, output_hidden_states=want_hidden)
    logits = out.logits[:, : stop - start]  # (B, W, V)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, start:stop]).squeeze(-1)
    elif critic is not None:
        values = critic.score(critic(**kw, output_hidden_states=True).hidden_states[-1][:, start:stop]).squeeze(-1)
    return logits, values


def packed_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int,
                  *, pack: bool = True) -> torch.Tensor:
    """Logits (B, stop - start, V) of a causal LM at padded columns [start, stop) (``windowed_outputs``)."""
    return windowed_outputs(model, input_ids, attention_mask, start, stop, pack=pack)[0]
