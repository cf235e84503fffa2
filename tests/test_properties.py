"""Property-based tests (hypothesis): whatever a data file holds, a loader returns checked records or raises
DataError, nothing else; segment spans tile a text's content; token spans tile the decoded response; moving
rewards between tokenisations and onto tokens keeps their sum.

Example counts are kept small (each loader example goes through ``datasets``); raise them locally with
``--hypothesis-seed`` / ``HYPOTHESIS_PROFILE`` as usual when hunting.
"""

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.data import (DataError, load_demo_set, load_preference_file, load_prompts, load_qa_feedback_preferences,
                       load_qa_feedback_spans, load_rows, load_sft_records)

LOADER_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                  HealthCheck.too_slow])

# JSON values: what a record's field may hold in a file someone wrote by hand
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
FIELDS = ["prompt", "chosen", "rejected", "completion", "text", "role", "content"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "wizard", ""]),
                                           "content": json_values | st.text(max_size=10)}), max_size=3)
field_values = json_values | st.text(max_size=30) | messages
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=5)


def _write_lines(folder, name, lines) -> str:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _only_data_errors(load, *args):
    """The loader's result, or None when it raised DataError; any other exception fails the test."""
    try:
        return load(*args)
    except DataError as exc:
        assert exc.path and str(exc).startswith(exc.path)
        return None


@LOADER_SETTINGS
@given(rows=st.lists(records | json_values, max_size=4), as_json=st.booleans())
def test_preference_sft_and_prompt_loaders_raise_only_data_errors(tmp_path_factory, rows, as_json):
    folder = tmp_path_factory.mktemp("data")
    path = (_write_lines(folder, "d.json", [json.dumps(rows)]) if as_json
            else _write_lines(folder, "d.jsonl", [json.dumps(r) for r in rows]))
    pairs = _only_data_errors(load_preference_file, path)
    for r in pairs or []:
        assert all(isinstance(r[k], (str, list)) for k in ("prompt", "chosen", "rejected"))
    for r in _only_data_errors(load_sft_records, path) or []:
        assert isinstance(r["prompt"], (str, list)) and isinstance(r["completion"], (str, list))
    for p in _only_data_errors(load_prompts, path, 8) or []:
        assert isinstance(p, str) and p.strip()


@LOADER_SETTINGS
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]))
def test_any_bytes_in_any_file_type_raise_only_data_errors(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"f{suffix}"
    path.write_bytes(data)
    rows = _only_data_errors(load_rows, path)
    assert rows is None or all(isinstance(r, dict) for r in rows)


def _qa_record():
    return {"question": "Q?", "passages": [["T", "S1.", "S2."]], "prediction 1": "One two three. Four five six.",
            "prediction 2": "b", "prediction 3": "c", "prediction 4": "d", "preference": [1, 2, 0, 1, 2, 1],
            "feedback": {"errors": [{"error type": "Unverifiable", "start": 15, "end": 29}],
                         "missing-info": [{"passage_id": 1, "sentence_id": [1]}], "corrected-prediction": ""}}


# a path into the QA record and the value put there: a good record with one or two things wrong
QA_PATHS = [("question",), ("passages",), ("passages", 0), ("passages", 0, 1), ("prediction 1",), ("prediction 3",),
            ("preference",), ("preference", 2), ("feedback",), ("feedback", "errors"), ("feedback", "errors", 0),
            ("feedback", "errors", 0, "start"), ("feedback", "errors", 0, "error type"), ("feedback", "missing-info"),
            ("feedback", "missing-info", 0), ("feedback", "missing-info", 0, "passage_id"),
            ("feedback", "missing-info", 0, "sentence_id"), ("feedback", "corrected-prediction")]


def _set(record, path, value):
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@LOADER_SETTINGS
@given(changes=st.lists(st.tuples(st.sampled_from(QA_PATHS), json_values), min_size=1, max_size=2))
def test_qa_feedback_loaders_raise_only_data_errors(tmp_path_factory, changes):
    record = _qa_record()
    for path, value in changes:
        try:
            _set(record, path, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change removed what this one would change
    folder = tmp_path_factory.mktemp("qa")
    (folder / "feedback.json").write_text(json.dumps([_qa_record(), record]))
    for spans in _only_data_errors(load_qa_feedback_spans, folder) or []:
        response = spans["response"]
        assert all(0 <= s["start"] < s["end"] <= len(response) and s["text"] == response[s["start"]:s["end"]]
                   for s in spans["spans"])
    for pair in _only_data_errors(load_qa_feedback_preferences, folder) or []:
        assert isinstance(pair["chosen"], str) and isinstance(pair["rejected"], str)


@LOADER_SETTINGS
@given(rows=st.lists(records | st.fixed_dictionaries({"prompt": field_values, "response": field_values,
                                                       "spans": json_values, "missing_info": json_values}), max_size=3))
def test_demo_set_loader_raises_only_data_errors(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("demo")
    _write_lines(folder, "demo.jsonl", [json.dumps(r) for r in rows])
    _write_lines(folder, "detox_prompts.jsonl", [json.dumps({"prompt": "You are"})])
    _only_data_errors(load_demo_set, folder)


# ----------------------------------------------------------------------------- segments and alignment

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120) | st.lists(
    st.sampled_from(["It rained.", "We stayed in,", "and read", "a book!", "Why?", "  ", "\n", "Dr. Smith", "é", "你好。",
                     "one two three four five six,", "🙂"]), max_size=12).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(text=texts)
def test_sentences_and_subsentences_tile_the_text_content(text):
    from core.rewards.segments import sentence_spans, subsentence_spans

    sentences = sentence_spans(text)
    covered = set()
    previous_end = 0
    for s, e in sentences:
        assert previous_end <= s < e <= len(text)
        assert text[s:e] == text[s:e].strip()  # trimmed, never empty
        covered.update(range(s, e))
        previous_end = e
    assert {i for i, c in enumerate(text) if not c.isspace()} <= covered  # every character of content is in a sentence
    subs = subsentence_spans(text)
    for s, e in subs:
        assert any(a <= s < e <= b for a, b in sentences)  # inside one sentence
        assert text[s:e] == text[s:e].strip()
    assert all(a[1] <= b[0] for a, b in zip(subs, subs[1:]))
    assert {i for i, c in enumerate(text) if not c.isspace()} <= {i for s, e in subs for i in range(s, e)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_token_spans_tile_the_decoded_response(tokenizer, text):
    from core.rewards.align import response_token_char_spans

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, spans = response_token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids)
    assert "".join(decoded[s:e] for s, e in spans) == decoded
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and (not spans or (spans[0][0], spans[-1][1]) == (0, len(decoded)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 49151), max_size=12))
def test_token_spans_tile_any_generated_ids(tokenizer, ids):
    """Sampled ids need not decode cleanly (partial multi-byte characters, special tokens)."""
    from core.rewards.align import response_token_char_spans

    assume(max(ids, default=0) < len(tokenizer))
    decoded, spans = response_token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids) and "".join(decoded[s:e] for s, e in spans) == decoded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, seed=st.integers(0, 2**16))
def test_moving_rewards_between_tokenisations_keeps_their_sum(tokenizer, text, seed):
    from core.rewards.align import response_token_char_spans, text_token_char_spans
    from core.rewards.redistribution import map_to_tokens

    policy_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, target = response_token_char_spans(tokenizer, policy_ids)
    _, rm_spans = text_token_char_spans(tokenizer, decoded + "!", add_special_tokens=True)  # another tokenisation
    rm_spans = [(min(s, len(decoded)), min(e, len(decoded))) for s, e in rm_spans]
    rewards = torch.randn(len(rm_spans), generator=torch.Generator().manual_seed(seed)).tolist()
    moved = map_to_tokens(rewards, rm_spans, target)
    assert len(moved) == len(target)
    if any(e > s for s, e in target):
        assert sum(moved) == pytest.approx(sum(rewards), abs=1e-9)
    else:
        assert moved == [0.0] * len(target)


class _SegmentLength:
    """A sentence- or sub-sentence-level component worth each segment's length (so sums are known)."""

    category = None

    def __init__(self, level):
        self.level, self.name = level, f"len_{level}"

    def score(self, prompts, responses, segments):
        return [[float(e - s) for s, e in row] for row in segments]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=3), left_pad=st.booleans())
def test_segment_rewards_land_on_tokens_with_their_sum(tokenizer, batch, left_pad):
    from core.rewards.align import response_token_char_spans
    from core.rewards.segments import segment_spans
    from core.rewards.tensor import compute_token_rewards

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch]
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        cols = slice(width - len(r), width) if left_pad else slice(0, len(r))
        ids[b, cols], mask[b, cols] = torch.tensor(r, dtype=torch.long), 1
    components = {c.name: c for c in (_SegmentLength("sentence"), _SegmentLength("subsentence"))}
    out = compute_token_rewards(["p"] * len(rows), ids, tokenizer, components, response_mask=mask)
    for name, level in (("len_sentence", "sentence"), ("len_subsentence", "subsentence")):
        per_token = out.components[name]
        assert torch.all(per_token[mask == 0] == 0)
        for b, r in enumerate(rows):
            decoded, _ = response_token_char_spans(tokenizer, r)
            expected = sum(e - s for s, e in segment_spans(decoded, level)) if r else 0
            assert per_token[b].sum().item() == pytest.approx(expected)
