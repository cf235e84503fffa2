"""Loaders: counts and first records of the real files, the demo set, reading every file format through
`datasets`, the grouped split, counted filtering, the named sets the trainers read, and DataError on bad input."""

import gzip
import json

import pytest

from core.data import (
    DataError,
    filter_records,
    load_davidson,
    load_demo_set,
    load_hh_rlhf,
    load_preference_file,
    load_qa_feedback_preferences,
    load_qa_feedback_spans,
    load_rows,
    provocative_prompts,
    split,
    tweet_opening,
)

# ----------------------------------------------------------------------------- real files


def test_qa_feedback_spans(shared_data):
    recs = load_qa_feedback_spans()
    assert len(recs) == 409
    r = recs[0]
    assert r["question"] == "When does bloom by troye sivan come out?"
    assert r["prompt"].startswith("question: When does bloom by troye sivan come out? context: wikipage: Bloom (Troye Sivan album) text:")
    assert [(s["start"], s["end"], s["error_type"], s["category"]) for s in r["spans"]] == [
        (152, 282, "Irrelevant", "C1"), (283, 401, "Irrelevant", "C1"), (489, 572, "Irrelevant", "C1")]
    assert r["spans"][0]["text"].startswith("The album follows up his 2015 debut")
    assert r["has_missing_info"] is False and r["corrected"].startswith("Bloom is the second studio album")
    for rec in recs:
        for s in rec["spans"]:
            assert 0 <= s["start"] < s["end"] <= len(rec["response"])
            assert rec["response"][s["start"]:s["end"]] == s["text"]
    assert sum(len(x["spans"]) for x in recs) == 1139
    assert sum(x["has_missing_info"] for x in recs) == 323
    cats = {s["category"] for x in recs for s in x["spans"]}
    assert cats == {"C1", "C2"}


def test_qa_feedback_preferences(shared_data):
    prefs = load_qa_feedback_preferences()
    assert len(prefs) == 2140 and prefs.skipped == {"tie": 314}  # 409 * 6 = 2454 judgements
    first = prefs[0]  # record 0: preference [0, 1, 2, 1, 0, 2]; 1v2 is a tie, 1v3 -> 1 wins
    assert (first["question_id"], first["chosen_index"], first["rejected_index"]) == (0, 1, 3)
    assert [(p["chosen_index"], p["rejected_index"]) for p in prefs[:4]] == [(1, 3), (4, 1), (2, 3), (4, 3)]
    spans = load_qa_feedback_spans()
    assert first["prompt"] == spans[0]["prompt"] and first["chosen"] == spans[0]["response"]


def test_hh_rlhf(shared_data):
    pairs = load_hh_rlhf()
    assert len(pairs) == 1991 and pairs.skipped == {"prefix_mismatch": 5, "empty_response": 4}
    p = pairs[0]
    assert p["prompt"].startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert p["prompt"].endswith("\n\nAssistant:") and not p["chosen"].startswith(" ")
    assert p["chosen"].startswith("No, sorry!") and p["rejected"].startswith("There are lots of funny things")
    kept = load_hh_rlhf(keep_mismatched=True)
    assert len(kept) == 1996 and sum(r.get("prefix_mismatch", False) for r in kept) == 5
    assert len(load_hh_rlhf(limit=10)) == 10


def test_davidson_and_prompts(shared_data):
    tweets = load_davidson()
    assert len(tweets) == 24783
    assert [sum(t["class"] == c for t in tweets) for c in (0, 1, 2)] == [1430, 19190, 4163]
    assert sum(t["toxic"] for t in tweets) == 1430 + 19190
    assert tweets[0]["class"] == 2 and tweets[0]["toxic"] is False
    prompts = provocative_prompts(20, seed=0, records=tweets)
    assert prompts == provocative_prompts(20, seed=0, records=tweets) != provocative_prompts(20, seed=1, records=tweets)
    assert len(prompts) == len(set(prompts)) == 20
    assert all(len(p.split()) == 5 and "@" not in p and "RT" not in p.split() for p in prompts)


def test_tweet_opening():
    assert tweet_opening('!!! RT @someone: "Well #honestly this is &amp; the worst day ever') == "Well honestly this is &"
    assert tweet_opening("too short", 5) is None


# ----------------------------------------------------------------------------- split and demo set


def test_split_is_deterministic_and_grouped():
    recs = [{"question_id": i // 3, "x": i} for i in range(60)]  # 20 questions, 3 records each
    train, held = split(recs, 0.25, seed=0)
    assert (len(train), len(held)) == (45, 15)
    assert not {r["question_id"] for r in train} & {r["question_id"] for r in held}
    assert split(recs, 0.25, seed=0) == (train, held)
    assert split(list(reversed(recs)), 0.25, seed=0)[1] == list(reversed(held))  # order-independent membership
    assert split(recs, 0.25, seed=1)[1] != held
    assert split(recs, 0.0)[1] == [] and split(recs, 1.0)[0] == []


def test_split_by_size_is_grouped_and_never_takes_the_only_group():
    recs = [{"prompt": f"p{i // 2}", "x": i} for i in range(10)]  # 5 prompts, 2 records each
    train, held = split(recs, eval_size=3, seed=0)
    assert len(held) == 4 and len(train) == 6  # whole prompts until >= 3 records
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert split(recs, eval_size=3, seed=0) == (train, held) and split(recs, eval_size=3, seed=1) != (train, held)
    assert split(recs, eval_size=0, seed=0) == (recs, [])
    assert split(recs, eval_size=100, seed=0)[0] != []  # the last group always trains
    assert split([{"prompt": "same"}] * 3, eval_size=1) == ([{"prompt": "same"}] * 3, [])
    by_fn = split(recs, eval_size=3, seed=0, key=lambda r: r["prompt"])
    assert by_fn == (train, held)
    with pytest.raises(ValueError, match="exactly one"):
        split(recs, 0.5, eval_size=2)


def test_filter_records_counts_each_reason():
    recs = [{"t": "a"}, {"t": ""}, {"t": "bb"}, {"t": "long text"}, {"t": ""}]
    kept = filter_records(recs, empty=lambda r: not r["t"], too_long=lambda r: len(r["t"]) > 3)
    assert kept == [{"t": "a"}, {"t": "bb"}] and kept.skipped == {"empty": 2, "too_long": 1}


def test_demo_set():
    demo = load_demo_set()
    assert len(demo.spans) == 14 and len(demo.preferences) == 10 and len(demo.detox_prompts) == 8
    assert any(not r["response"].isascii() for r in demo.spans)  # café, Zürich, naïve, °C, —
    n_spans = 0
    for r in demo.spans:
        for s in r["spans"]:
            assert r["response"][s["start"]:s["end"]] == s["text"] and s["category"] in ("C1", "C2")
            n_spans += 1
        assert r["response"].count(".") >= 2
    assert n_spans == 12
    assert {s["category"] for r in demo.spans for s in r["spans"]} == {"C1", "C2"}


# ----------------------------------------------------------------------------- bad input


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_preference_jsonl_ok_and_chat(tmp_path):
    chat = [{"role": "user", "content": "Hi"}]
    path = _write(tmp_path, "ok.jsonl", [json.dumps({"prompt": "P", "chosen": "A", "rejected": "B"}), "",
                                         json.dumps({"prompt": chat, "chosen": [{"role": "assistant", "content": "Yo"}],
                                                     "rejected": "no"})])
    recs = load_preference_file(path)
    assert len(recs) == 2 and recs[1]["prompt"] == chat


@pytest.mark.parametrize("lines, index, problem", [
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "rejected": "b"}], 1, "missing 'chosen'"),
    ([{"prompt": "p", "chosen": "  ", "rejected": "b"}], 0, "'chosen' is empty"),
    ([{"prompt": "p", "chosen": [{"content": "x"}], "rejected": "b"}], 0, "message 0 must be a dict with 'role'"),
    (["this is not json"], 0, "line 1 is not JSON"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, [1, 2]], 1, "line 2 is a JSON list, not an object"),
])
def test_preference_jsonl_errors(tmp_path, lines, index, problem):
    path = _write(tmp_path, "bad.jsonl", [x if isinstance(x, str) else json.dumps(x) for x in lines])
    with pytest.raises(DataError) as e:
        load_preference_file(path)
    assert str(path) in str(e.value) and f"record {index}" in str(e.value) and problem in str(e.value)
    assert e.value.index == index


def _qa_record(errors, response="One two three. Four five six."):
    return {"question": "Q?", "passages": [["T", "S1.", "S2."]], "gold": "", "prediction 1": response,
            "prediction 2": "b", "prediction 3": "c", "prediction 4": "d",
            "feedback": {"errors": errors, "missing-info": [], "corrected-prediction": ""}, "preference": [1] * 6}


@pytest.mark.parametrize("errors, problem", [
    ([{"error type": "Irrelevant", "start": 15, "end": 99}], "span (15, 99) is outside the response of 29 characters"),
    ([{"error type": "Rude", "start": 0, "end": 4}], "unknown error type 'Rude'"),
])
def test_qa_spans_errors(tmp_path, errors, problem):
    good = _qa_record([{"error type": "Unverifiable", "start": 15, "end": 29}])
    path = tmp_path / "feedback.json"
    path.write_text(json.dumps([good, _qa_record(errors)]))
    with pytest.raises(DataError) as e:
        load_qa_feedback_spans(tmp_path)
    assert str(path) in str(e.value) and "record 1" in str(e.value) and problem in str(e.value)
    path.write_text(json.dumps([good]))
    (rec,) = load_qa_feedback_spans(tmp_path)  # no sft.json: prompt built in the repo's format
    assert rec["prompt"] == "question: Q? context: wikipage: T text: S1. S2."
    assert rec["spans"][0]["category"] == "C2" and rec["spans"][0]["text"] == "Four five six."


def test_other_file_errors(tmp_path):
    bad = tmp_path / "feedback.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_qa_feedback_spans(bad)
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi"}) + "\n")
    with pytest.raises(DataError, match=r"hh.jsonl.gz, record 0: 'rejected' has no"):
        load_hh_rlhf(hh)
    with pytest.raises(DataError, match="file not found"):
        load_davidson(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- file formats through `datasets`

ROWS = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
        {"prompt": "Name a fruit.", "chosen": "Apple", "rejected": "Chair"}]


def test_jsonl_csv_parquet_and_gzip_round_trip(tmp_path):
    import pandas as pd

    df = pd.DataFrame(ROWS)
    df.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    for name in ("p.jsonl", "p.csv", "p.parquet", "p.json", "p.jsonl.gz"):
        assert load_preference_file(tmp_path / name) == ROWS, name
    rows = load_rows(tmp_path / "p.csv")
    assert rows.columns == ["prompt", "chosen", "rejected"]


def test_csv_keeps_cells_as_written(tmp_path):
    (tmp_path / "t.csv").write_text("prompt,chosen,rejected\nNA,null,\n")
    assert list(load_rows(tmp_path / "t.csv")) == [{"prompt": "NA", "chosen": "null", "rejected": ""}]


def test_empty_files_have_no_rows(tmp_path):
    for name, text in (("e.jsonl", ""), ("b.jsonl", "\n\n"), ("e.csv", ""), ("e.txt", "")):
        (tmp_path / name).write_text(text)
        assert load_rows(tmp_path / name) == [], name


def test_an_edited_file_is_read_afresh(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    assert len(load_rows(path)) == 1
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))  # same name, same second
    assert len(load_rows(path)) == 3


def test_absent_fields_stay_absent_and_mixed_types_load(tmp_path):
    chat = [{"role": "user", "content": "Hi"}]
    path = _write(tmp_path, "m.jsonl", [json.dumps({"prompt": "P", "chosen": "A", "rejected": "B", "source": "x"}),
                                        json.dumps({"prompt": chat, "chosen": "Yo", "rejected": "no"})])
    rows = load_rows(path)
    assert rows[0]["source"] == "x" and "source" not in rows[1] and rows[1]["prompt"] == chat


@pytest.mark.parametrize("text, index, problem", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": "b"\n', 1, "line 3 is not JSON"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n"just a string"\n', 1, "line 2 is a JSON str, not an object"),
])
def test_malformed_jsonl_line_names_file_record_and_line(tmp_path, text, index, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert str(e.value).startswith(f"{path}, record {index}: {problem}") and e.value.index == index


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.csv").write_text('a,b\n1,"unterminated\n')
    with pytest.raises(DataError, match=r"bad.csv: cannot be read as CSV"):
        load_rows(tmp_path / "bad.csv")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(tmp_path / "x.xml")
    with pytest.raises(DataError, match="file not found"):
        load_rows(tmp_path / "sub" / "none.jsonl")  # a missing path is never taken for a Hub id
    with pytest.raises(DataError, match="owner/no-such-set: not a local file, and the Hugging Face Hub data set"):
        load_rows("owner/no-such-set")  # offline in the tests


def test_named_sets_have_one_spelling(tmp_path):
    from core.data import dataset_name, load_preference_records, load_prompts, load_ptx_texts, load_sft_records

    assert dataset_name("qa_feedback") == dataset_name("qa-feedback") == "qa-feedback"
    assert dataset_name("hh_rlhf") == "hh-rlhf" and dataset_name("my_file.jsonl") == "my_file.jsonl"
    assert load_preference_records("demo") == [dict(r) for r in load_demo_set().preferences]
    assert load_sft_records("demo", limit=2) == [{"prompt": r["prompt"], "completion": r["chosen"]}
                                                 for r in load_demo_set().preferences[:2]]
    with pytest.raises(DataError, match="unknown preference data set: use one of"):
        load_preference_records("qa feedback")
    (tmp_path / "p.txt").write_text("first prompt\n\n  second prompt \n")
    assert sorted(load_prompts(str(tmp_path / "p.txt"), 5)) == ["first prompt", "second prompt"]
    prompts = _write(tmp_path, "p.jsonl", [json.dumps({"prompt": "a"}), json.dumps({"prompt": " "})])
    with pytest.raises(DataError, match=r"p.jsonl, record 1: needs a non-empty 'prompt' string"):
        load_prompts(str(prompts), 5)
    (tmp_path / "t.csv").write_text("text\nsome text\n")
    assert load_ptx_texts(str(tmp_path / "t.csv")) == ["some text"]
