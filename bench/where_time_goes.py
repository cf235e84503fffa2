"""Profile: where the time of one training step goes, and what each of ours' choices saves.

What it measures, on real work (the default SmolLM2-135M model, fp32, the first HH-RLHF pairs
that fit max length 256 untruncated, 4 pairs = 8 sequences per step as in bench/compare_trl.py):
  1. preference step (DPO shape), forward + backward, four ways: padded batch with full-vocabulary
     logits at every position (what TRL does), padded with logits only for the completion window,
     packed with a dense block-diagonal mask (plain sdpa), packed with per-sequence segment
     attention (ours: `core.packing.packed_logits`); with padding waste and logit rows computed;
  2. reward-model step: Bradley-Terry loss on last-token scores, padded vs packed backbone pass;
  3. one AdamW step over all 135M parameters: torch's default (a per-tensor loop on CPU),
     foreach=True, fused=True (ours: `core.trainers.common.adamw`; TRL 1.16 on transformers 5
     defaults to `adamw_torch_fused` too, so this saving is against plain torch, not TRL);
  4. one PPO minibatch (4 HH prompts <= 128 tokens, left-padded, + 32 random response tokens;
     policy + separate critic), forward + backward + fused AdamW step: ours (`score_tokens`:
     packed, window logits) vs TRL-style (padded, full-vocabulary logits, critic on the padded batch);
  5. the same PPO minibatch after `core.devices.keep_freed_memory()` (glibc keeps freed memory for
     reuse instead of unmapping it; measured last, as it cannot be undone in the process);
  6. FLOP sanity check: GFLOP/s of a (400x576)@(576x1536) fp32 matmul against the achieved
     GFLOP/s of ours' PPO minibatch (6 x non-embedding params x tokens per model + the lm_head window).
Seconds are medians over --repeats rounds after one untimed warm-up, the variants of a section
interleaved (a burst of load from other work hits each alike); "x ours" = seconds / ours' seconds.
Each section checks that its variants compute the same numbers (max |difference| printed).

What it leaves out: GPU timings, the reference pass and generation (bench/ppo_short.py --ablate
times the KV cache), gradient checkpointing, attention FLOPs in the FLOP count.

    ./wb python bench/where_time_goes.py               # 3 repeats (about 3 min on 2 cores)
    ./wb python bench/where_time_goes.py --quick       # 1 repeat, one warm-up per section (< 3 min)
Results are recorded in docs/benchmarks.md (## Where the time goes).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.nn.functional import logsigmoid  # noqa: E402

N_PAIRS, MAX_LENGTH, PPO_PROMPT_TOKENS, PPO_RESPONSE_TOKENS, TEMPERATURE = 4, 256, 128, 32, 0.7


def laps(*phases) -> dict:
    """Run each (name, function) in turn; {name: seconds}."""
    out = {}
    for name, fn in phases:
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    return out


def train_step(zero, forward, optimizer=None):
    """A step function: zero(), then the timed phases forward() (returns the loss), backward, optimizer()."""
    box = {}
    phases = [("forward", lambda: box.update(loss=forward())), ("backward", lambda: box["loss"].backward())]
    phases += [("optimizer", optimizer)] if optimizer else []

    def step():
        zero()
        return laps(*phases)
    return step


def bench(steps, repeats: int, quick: bool) -> list[dict]:
    """Warm up each step (--quick: the first only), then `repeats` interleaved rounds; per step the median of
    each phase, of the total, and the total's range."""
    for step in steps[:1] if quick else steps:
        step()
    runs = list(zip(*[[step() for step in steps] for _ in range(repeats)]))  # runs[i]: step i's rounds
    out = []
    for rs in runs:
        totals = [sum(r.values()) for r in rs]
        out.append({**{k: statistics.median(r[k] for r in rs) for k in rs[0]},
                    "total": statistics.median(totals), "lo": min(totals), "hi": max(totals)})
    return out


def fmt_s(x):
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def table(title, header, rows, timings, phases=("forward", "backward")):
    """Markdown table: the leading columns, each phase's seconds, total (range) and x ours (ours = the last row)."""
    shown = phases if len(phases) > 1 else ()
    header = ["variant", *header, *(f"{p} s" for p in shown), "total s (range)", "x ours"]
    print(f"\n**{title}**\n\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row, r in zip(rows, timings):
        total = fmt_s(r["total"]) + (f" ({fmt_s(r['lo'])}-{fmt_s(r['hi'])})" if r["hi"] > r["lo"] else "")
        cells = [*row, *(fmt_s(r[p]) for p in shown), total, f"{r['total'] / timings[-1]['total']:.2f}"]
        print("| " + " | ".join(cells) + " |")


def waste(positions, tokens) -> list[str]:
    return [f"{positions:,}", f"{100 * (1 - tokens / positions):.0f} %"]


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- data


def hh_records(limit):
    from core.data import DataError, load_hh_rlhf

    try:
        return load_hh_rlhf(limit=limit)
    except (DataError, OSError) as exc:
        raise SystemExit(f"where_time_goes: this profile needs the real HH-RLHF data (../shared/data/hh_rlhf "
                         f"or $RLHF_WORKBENCH_DATA), which core.data could not read:\n  {exc}")


def preference_batch(tok) -> dict:
    """The first 4 HH pairs whose prompt + response (+ EOS) fit 256 tokens, collated as ours does (left-padded)."""
    from core.trainers.batching import collate_preferences, tokenize_preferences

    examples = tokenize_preferences(tok, hh_records(200), MAX_LENGTH, MAX_LENGTH)[:N_PAIRS]
    batch = collate_preferences(examples, tok.pad_token_id)
    T, K = batch["input_ids"].shape[1], int(batch["completion_lengths"].max())
    return {**batch, "T": T, "K": K, "start": T - K - 1, "stop": T - 1}  # logits [start, stop) predict the last K


def ppo_rollout(tok, vocab):
    """4 distinct HH prompts of <= 128 tokens, left-padded, + 32 random response tokens each."""
    from core.rollout import Rollout

    prompts = []
    for r in hh_records(400):
        if r["prompt"] not in prompts and len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) <= PPO_PROMPT_TOKENS:
            prompts.append(r["prompt"])
        if len(prompts) == 4:
            break
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    response = torch.randint(10, vocab, (4, PPO_RESPONSE_TOKENS), generator=torch.Generator().manual_seed(0))
    return Rollout(prompts, enc["input_ids"], enc["attention_mask"], response, torch.ones_like(response),
                   torch.zeros(4, dtype=torch.bool))


# ----------------------------------------------------------------------------- sections


def preference_section(model, batch, timed):
    from core.logprobs import completion_logprobs, selective_log_softmax
    from core.packing import Packing, packed_logits

    ids, mask, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    T, K, start, stop = batch["T"], batch["K"], batch["start"], batch["stop"]
    rows, M = ids.shape[0], int(mask.sum())
    packing = Packing.of(ids, mask)
    N, keep = packing.input_ids.numel(), len(packing.window_columns(start, stop))

    def sdpa():  # plain sdpa, whatever ran before (packed_logits switches the model to segment attention)
        model.config._attn_implementation = "sdpa"

    def window_logps(logits):  # (8, K, V) -> (8, K) completion log-probs
        return selective_log_softmax(logits, ids[:, -K:]).masked_fill(cmask[:, -K:] == 0, 0.0)

    def full_logits():  # TRL: every position of the padded batch through lm_head
        sdpa()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits  # (8, T, V)
        return completion_logprobs(logits, ids, cmask)[:, -K:]

    def padded_window():
        sdpa()
        return window_logps(packed_logits(model, ids, mask, start, stop, pack=False))

    def dense_block():  # one packed row, no packed_pass: transformers' sdpa with a dense N x N block-diagonal mask
        sdpa()
        p = Packing.of(ids, mask)
        cols = p.window_columns(start, stop)
        return window_logps(p.unpack(model(**p.model_inputs(), logits_to_keep=cols).logits, start, stop, kept_columns=cols))

    def segment():  # ours: one sdpa call per packed sequence
        return window_logps(packed_logits(model, ids, mask, start, stop, pack=True))

    variants = [("padded, full logits (TRL)", full_logits, rows * T, rows * T),
                ("padded, window logits", padded_window, rows * T, rows * (K + 1)),
                ("packed, dense block mask, window logits", dense_block, N, keep),
                ("packed, segment attention, window logits (ours)", segment, N, keep)]
    outputs = {}

    def dpo_loss(fn):  # sigmoid DPO loss with reference log-probs 0 (the trainers precompute them)
        def forward():
            logps = fn()
            outputs[fn] = logps.detach()
            s = logps.sum(-1)
            return -logsigmoid(0.1 * (s[:N_PAIRS] - s[N_PAIRS:])).mean()
        return forward

    timings = timed([train_step(lambda: model.zero_grad(set_to_none=True), dpo_loss(fn)) for _, fn, *_ in variants])
    model.zero_grad(set_to_none=True)
    table(f"Preference step (DPO shape): {rows} sequences, {M} non-pad tokens, padded {rows}x{T}, "
          f"completion window {K}; forward + backward", ["positions computed", "padding waste", "logit rows"],
          [(name, *waste(positions, M), f"{logit_rows:,}") for name, _, positions, logit_rows in variants], timings)
    first = outputs[full_logits]
    print(f"\nsame numbers: max |log-prob difference| to the first row {max(max_diff(o, first) for o in outputs.values()):.1e}")


def reward_section(path, batch, timed):
    from core.models import load_reward_model
    from core.packing import Packing, decoder_hidden_states
    from core.rewards.preference_rm import backbone_and_head, gather_last

    torch.manual_seed(0)
    rm = load_reward_model(path, device="cpu", dtype=torch.float32).train()
    backbone, head = backbone_and_head(rm)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    M = int(mask.sum())
    variants = [("padded", False, ids.numel()),
                ("packed, segment attention (ours)", True, Packing.of(ids, mask).input_ids.numel())]
    scores = {}

    def bt_loss(pack):  # Bradley-Terry on the last-token scores, chosen rows first
        def forward():
            s = head(gather_last(decoder_hidden_states(backbone, ids, mask, pack=pack), mask)).squeeze(-1)
            scores[pack] = s.detach()
            return -logsigmoid(s[:N_PAIRS] - s[N_PAIRS:]).mean()
        return forward

    timings = timed([train_step(lambda: rm.zero_grad(set_to_none=True), bt_loss(pack)) for _, pack, _ in variants])
    table(f"Reward-model step: {ids.shape[0]} sequences, {M} non-pad tokens; Bradley-Terry loss, forward + backward",
          ["positions computed", "padding waste"], [(name, *waste(n, M)) for name, _, n in variants], timings)
    print(f"\nsame numbers: max |score difference| {max_diff(scores[False], scores[True]):.1e}")


def optimizer_section(model, timed):
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    variants = [("torch.optim.AdamW default (foreach=None: per-tensor loop on CPU)", {}),
                ("foreach=True", {"foreach": True}), ("fused=True (ours: common.adamw)", {"fused": True})]
    optimizers = [torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, **kwargs) for _, kwargs in variants]
    for opt in optimizers:
        opt.step()  # creates the states (not steady-state work), also under --quick
    timings = timed([lambda opt=opt: laps(("step", opt.step)) for opt in optimizers])
    table(f"Optimizer step: AdamW over {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.1f}M parameters",
          [], [(name,) for name, _ in variants], timings, phases=("step",))


def ppo_section(path, tok, timed):
    """Returns (FLOPs of ours' minibatch, ours' timings) for the FLOP check."""
    from core.logprobs import selective_log_softmax
    from core.packing import Packing
    from core.rollout import score_tokens
    from core.trainers.common import adamw
    from core.trainers.ppo import PPOConfig, build_models

    torch.manual_seed(0)
    model, reference = build_models(PPOConfig(model_name_or_path=path, lora=False, value_model="separate"),
                                    torch.device("cpu"))
    del reference  # the reference pass is not part of a minibatch
    model.train()
    policy, critic = model.policy, model.critic
    ro = ppo_rollout(tok, policy.config.vocab_size)
    ids, mask, (B, P), R = ro.input_ids, ro.attention_mask, ro.query_ids.shape, PPO_RESPONSE_TOKENS
    gen = torch.Generator().manual_seed(1)
    advantages, returns, rmask = torch.randn(B, R, generator=gen), torch.randn(B, R, generator=gen), ro.response_mask.float()
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def ours():
        out = score_tokens(model, ro, TEMPERATURE, with_entropy=True)
        return out.logprobs, out.values

    def trl_style():  # padded batch: policy logits at every position, critic backbone + score at every position
        for m in (policy, critic):
            m.config._attn_implementation = "sdpa"
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), use_cache=False)
        logits = policy(**kw).logits[:, P - 1:-1] / TEMPERATURE  # (B, R, V) out of the full (B, P + R, V)
        values = critic.score(critic(**kw, output_hidden_states=True).hidden_states[-1]).squeeze(-1)[:, P - 1:-1]
        with torch.no_grad():  # the entropy TRL logs
            (torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)).mean()
        return selective_log_softmax(logits, ro.response_ids), values

    with torch.no_grad():  # same numbers at the same weights, before any optimizer step
        check = [[x * rmask for x in fn()] for fn in (trl_style, ours)]

    def ppo_loss(fn):  # policy-gradient surrogate (ratio 1) + value loss, random advantages and returns
        def forward():
            logps, values = fn()
            pg = -(advantages * torch.exp(logps - logps.detach()) * rmask).sum() / rmask.sum()
            return pg + 0.05 * (((values - returns) ** 2) * rmask).sum() / rmask.sum()
        return forward

    def optimizer():
        opt.step()
        opt.zero_grad(set_to_none=True)

    M = int(mask.sum())
    variants = [("padded, full logits (TRL-style)", trl_style, ids.numel(), ids.numel()),
                ("packed, segment attention, window logits (ours)", ours, Packing.of(ids, mask).input_ids.numel(), B * R)]
    timings = timed([train_step(lambda: None, ppo_loss(fn), optimizer) for _, fn, *_ in variants])
    table(f"PPO minibatch: {B} rollouts ({P} prompt + {R} response columns, {M} non-pad tokens), policy + separate "
          "critic (positions per model), forward + backward + fused AdamW step",
          ["positions computed", "padding waste", "logit rows"],
          [(name, *waste(n, M), f"{logit_rows:,}") for name, _, n, logit_rows in variants], timings,
          phases=("forward", "backward", "optimizer"))
    print(f"\nsame numbers (before any optimizer step): max |difference| log-probs {max_diff(check[0][0], check[1][0]):.1e}, "
          f"values {max_diff(check[0][1], check[1][1]):.1e}")
    non_embedding = sum(p.numel() for m in (policy, critic) for n, p in m.named_parameters()
                        if "embed" not in n and "lm_head" not in n)
    flops = 6 * non_embedding * M + 6 * policy.config.hidden_size * policy.config.vocab_size * B * R
    rerun_ours = lambda: timed([train_step(lambda: None, ppo_loss(ours), optimizer)])[0]  # noqa: E731
    return flops, timings[-1], rerun_ours


def matmul_gflops(repeats=50):
    a, b = torch.randn(400, 576), torch.randn(576, 1536)
    times = []
    for _ in range(repeats + 5):  # the first 5: warm-up
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 400 * 576 * 1536 / statistics.median(times[5:]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, one warm-up per section (< 3 min)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 3, --quick 1)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    from transformers.utils import logging as hf_logging

    from core.models import ensure_default_model, load_causal_lm, load_tokenizer

    hf_logging.set_verbosity_error()  # no load report (the fresh score heads) between the tables
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{repeats} repeat(s){', --quick' if args.quick else ''}")
    torch.manual_seed(0)
    path = str(ensure_default_model(verbose=False))
    tok = load_tokenizer(path)
    batch = preference_batch(tok)
    timed = lambda steps: bench(steps, repeats, args.quick)  # noqa: E731

    model = load_causal_lm(path, device="cpu", dtype=torch.float32).train()
    preference_section(model, batch, timed)
    reward_section(path, batch, timed)
    optimizer_section(model, timed)
    del model
    gc.collect()
    flops, ours, rerun_ours = ppo_section(path, tok, timed)

    # last, because it cannot be undone in this process: glibc malloc keeping freed memory (core.devices)
    from core.devices import keep_freed_memory

    applied = keep_freed_memory()
    kept = rerun_ours()
    print(f"\nFreed-memory reuse (core.devices.keep_freed_memory, applied: {applied}), ours' PPO minibatch: "
          f"{ours['total']:.2f} s with glibc's default (large blocks mmap-ed and unmapped every step) -> "
          f"{kept['total']:.2f} s reusing freed heap memory (x{ours['total'] / kept['total']:.2f}); "
          f"forward {kept['forward']:.2f} s, backward {kept['backward']:.2f} s, optimizer {kept['optimizer']:.2f} s")

    peak, achieved = matmul_gflops(), flops / ours["total"] / 1e9
    print(f"\nFLOP check: a (400x576)@(576x1536) fp32 matmul runs at {peak:.0f} GFLOP/s; ours' PPO minibatch is "
          f"{flops / 1e9:.0f} GFLOP (6 x non-embedding params x non-pad tokens, policy + critic, + the lm_head window) "
          f"in {ours['total']:.2f} s = {achieved:.0f} GFLOP/s, {100 * achieved / peak:.0f} % of the matmul "
          f"(forward + backward alone: {flops / (ours['forward'] + ours['backward']) / 1e9:.0f} GFLOP/s)")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
