"""Padding-free passes (core.packing) equal the padded ones: outputs, windows and gradients."""

import pytest
import torch


def _batch(lengths, T, side, vocab=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, T - n:] = 1
        elif side == "right":
            mask[b, :n] = 1
        else:  # a prompt left-padded, a response right-padded: a hole-free run in the middle
            mask[b, (T - n) // 2:(T - n) // 2 + n] = 1
    return ids * mask, mask


def _padded_logits(model, ids, mask):
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits


@pytest.mark.parametrize("side", ["left", "right", "middle"])
def test_pack_unpack_roundtrip_exact(side):
    from core.packing import Packing

    ids, mask = _batch([5, 1, 0, 7, 3], 9, side)
    for cap in (4096, 8, 7):  # one row; several rows (first-fit); a sequence as long as the cap
        p = Packing.of(ids, mask, max_row_tokens=cap)
        assert int((p.input_ids != 0).sum()) == int(mask.sum())  # every attended token packed once, no pad
        assert torch.equal(p.unpack(p.input_ids), ids)  # back to the padded layout, 0 at pads
        # positions restart at 0 for every sequence
        pos = p.unpack(p.position_ids)
        assert torch.equal(pos[mask.bool()], ((mask.cumsum(-1) - 1).clamp(min=0))[mask.bool()])
        assert p.input_ids.shape[1] <= max(cap, 7)
    assert Packing.of(ids, mask, max_row_tokens=8).input_ids.shape[0] > 1


def test_pack_rejects_mismatched_shapes():
    from core.packing import Packing

    with pytest.raises(ValueError, match="must both be"):
        Packing.of(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_logits_equal_padded(tiny_model, side):
    from core.packing import can_pack, packed_logits

    assert can_pack(tiny_model)
    ids, mask = _batch([12, 5, 9, 1], 12, side, seed=1)
    with torch.no_grad():
        full = _padded_logits(tiny_model, ids, mask)
        for start, stop in ((0, 12), (4, 11), (10, 12)):
            window = packed_logits(tiny_model, ids, mask, start, stop)
            want = full[:, start:stop] * mask[:, start:stop, None]
            torch.testing.assert_close(window, want, atol=2e-5, rtol=1e-5)
            padded = packed_logits(tiny_model, ids, mask, start, stop, pack=False)  # the fallback path
            sel = mask[:, start:stop].bool()
            torch.testing.assert_close(padded[sel], full[:, start:stop][sel], atol=2e-5, rtol=1e-5)


def test_packed_gradients_equal_padded(tiny_model):
    from core.packing import packed_logits

    ids, mask = _batch([10, 4, 7], 10, "left", seed=2)

    def grads(pack):
        tiny_model.zero_grad(set_to_none=True)
        logits = packed_logits(tiny_model, ids, mask, 2, 9, pack=pack)
        (logits.float().log_softmax(-1)[..., 5] * mask[:, 2:9]).sum().backward()
        return [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]

    for a, b in zip(grads(True), grads(False)):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_decoder_hidden_states_and_value_head_windows(tiny_model):
    from core.packing import decoder_hidden_states
    from core.value_head import CausalLMWithValueHead

    ids, mask = _batch([8, 3, 6], 8, "right", seed=3)
    sel = mask.bool()
    with torch.no_grad():
        packed = decoder_hidden_states(tiny_model.model, ids, mask)
        padded = decoder_hidden_states(tiny_model.model, ids, mask, pack=False)
        torch.testing.assert_close(packed[sel], padded[sel], atol=2e-5, rtol=1e-5)
        assert torch.all(packed[~sel] == 0)
        model = CausalLMWithValueHead(tiny_model)
        torch.nn.init.normal_(model.v_head.weight)
        logits, values = model(ids, mask)
        w_logits, w_values = model(ids, mask, 2, 6)
        torch.testing.assert_close(w_logits, logits[:, 2:6], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(w_values, values[:, 2:6], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(values[sel], model.v_head(padded).squeeze(-1)[sel], atol=2e-5, rtol=1e-5)


def test_unpackable_model_falls_back_to_padded():
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.packing import can_pack, packed_logits

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=200, n_positions=32)).eval()
    assert not can_pack(model)  # absolute positions: not in PACKABLE_MODEL_TYPES
    ids, mask = _batch([6, 6], 6, "right", seed=4)  # no padding: the fallback is just the plain forward
    with torch.no_grad():
        torch.testing.assert_close(packed_logits(model, ids, mask, 1, 5), model(input_ids=ids).logits[:, 1:5])


def test_segment_attention_is_sdpa_outside_packed_passes(tiny_model, tokenizer):
    from core.packing import SEGMENT_ATTENTION, packed_logits

    enc = tokenizer(["Hello there, how", "The weather"], return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = tiny_model(**enc, use_cache=False).logits
        greedy = tiny_model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tiny_model.config._attn_implementation == "sdpa"
        packed_logits(tiny_model, enc["input_ids"], enc["attention_mask"], 0, enc["input_ids"].shape[1])
        assert tiny_model.config._attn_implementation == SEGMENT_ATTENTION  # switched once, for good
        torch.testing.assert_close(tiny_model(**enc, use_cache=False).logits, plain, atol=0, rtol=0)
        again = tiny_model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(again, greedy)


def test_adamw_uses_the_fused_kernel_on_cpu():
    from core.trainers.common import adamw

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = adamw(params, lr=0.1, weight_decay=0.0)
    assert opt.defaults["fused"] is True
    reference = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.1, weight_decay=0.0)
    for p, q in zip(params, reference.param_groups[0]["params"]):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt.step()
    reference.step()
    for p, q in zip(params, reference.param_groups[0]["params"]):
        torch.testing.assert_close(p, q)  # the same update rule as the default implementation


def test_keep_freed_memory_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    import sys

    from core.devices import keep_freed_memory

    monkeypatch.setenv("RLHF_WORKBENCH_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("RLHF_WORKBENCH_KEEP_FREED_MEMORY")
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert keep_freed_memory() is True  # mallopt accepted every setting
            x = torch.ones(64 << 20, dtype=torch.uint8)  # a 64 MiB block still allocates and frees normally
            assert int(x.sum()) == 64 << 20
