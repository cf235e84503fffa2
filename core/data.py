"""Data loaders: preference pairs, fine-grained span feedback, toxic tweets, the built-in demo set.

What it is: functions that read a file and return plain Python records (dicts), after
checking every record. Anything wrong raises ``DataError`` whose message names the
file, the record index (0-based) and what is wrong. Loaders never write anything.

- ``load_preference_jsonl``: TRL's ``{prompt, chosen, rejected}``, each plain text or a
  list of chat messages ``{role, content}``.
- ``load_hh_rlhf``: Anthropic HH-RLHF (Bai et al. 2022), harmless-base test split.
- ``load_qa_feedback_preferences`` / ``load_qa_feedback_spans``: QA-Feedback (Wu et al.
  2023), the pairwise preferences among 4 answers and the fine-grained error spans
  (C1 sub-sentence, C2 sentence, C3 missing information) on ``prediction 1``. Prompts
  are the repo's policy input (allenai/FineGrainedRLHF ``train_finegrained.py`` feeds
  ``sft.json``'s ``text``: ``question: Q context: wikipage: T text: P | wikipage: ...``).
- ``load_davidson`` / ``provocative_prompts``: Davidson et al. 2017 tweets.
- ``split``: a deterministic train/eval split by group (question, prompt) so no group
  is on both sides. ``load_demo_set``: the small demo set in ``core/demo_data``.

Real data is read from ``core.paths.shared_data_dir()`` and never copied. What it leaves
out: tokenisation and chat templates (trainers), downloading anything.

    from core.data import load_qa_feedback_spans, split
    records = load_qa_feedback_spans()                # 409 dicts
    train, held_out = split(records, 0.1, seed=0)     # grouped by question_id
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import html
import json
import random
from dataclasses import dataclass
from pathlib import Path

from core.paths import demo_data_dir, shared_data_dir

C1_TYPES = ("Irrelevant", "Redundant", "Incoherent")  # irrelevance, repetition, incoherence: sub-sentence level
C2_TYPES = ("Wrong-Grounding", "Unverifiable")  # incorrect or unverifiable facts: sentence level
PAIR_ORDER = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))  # QA-Feedback `preference` order
HH_SEPARATOR = "\n\nAssistant:"


class DataError(ValueError):
    """A data file or record is malformed; the message names the file, the record index and the problem."""

    def __init__(self, path, index: int | None, problem: str):
        where = f"{path}" if index is None else f"{path}, record {index}"
        super().__init__(f"{where}: {problem}")
        self.path, self.index, self.problem = str(path), index, problem


class Records(list):
    """A plain list of records, plus ``skipped``: reason -> how many input records were left out."""

    def __init__(self, items=(), skipped: dict[str, int] | None = None):
        super().__init__(items)
        self.skipped = dict(skipped or {})


# ----------------------------------------------------------------------------- checks


def _check_text(value, path, i, name, allow_empty=False):
    if not isinstance(value, str):
        raise DataError(path, i, f"'{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(path, i, f"'{name}' is empty")
    return value


def _field(obj, key, path, i, check=_check_text):
    """obj[key] after ``check``; DataError naming the key when it is missing."""
    if key not in obj:
        raise DataError(path, i, f"missing '{key}'")
    return check(obj[key], path, i, key)


def _check_turns(value, path, i, name):
    """Plain text or chat messages [{role, content}, ...]."""
    if isinstance(value, str):
        return _check_text(value, path, i, name)
    if not isinstance(value, list) or not value:
        raise DataError(path, i, f"'{name}' must be text or a non-empty list of {{role, content}} messages")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(path, i, f"'{name}' message {j} must be a dict with 'role' and 'content'")
        _check_text(m["content"], path, i, f"{name}[{j}].content")
    return value


def _open(path, opener=open, **kw):
    try:
        return opener(path, "rt", encoding="utf-8", **kw)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None


def _read_json(path):
    with _open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise DataError(path, None, f"not valid JSON ({e})") from None


def _iter_jsonl(path, opener=open):
    """(record index, object) for each non-blank line; DataError on a line that is not a JSON object."""
    with _open(path, opener) as f:
        i = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise DataError(path, i, f"line {lineno} is not JSON (the file must be JSON lines)") from None
            if not isinstance(obj, dict):
                raise DataError(path, i, f"line {lineno} is a JSON {type(obj).__name__}, not an object")
            yield i, obj
            i += 1


# ----------------------------------------------------------------------------- preference pairs


def load_preference_jsonl(path) -> list[dict]:
    """TRL preference records ``{prompt, chosen, rejected}`` (text or chat messages), extra keys kept."""
    out = []
    for i, obj in _iter_jsonl(path):
        for key in ("prompt", "chosen", "rejected"):
            _field(obj, key, path, i, _check_turns)
        out.append(obj)
    return out


def load_hh_rlhf(path=None, limit: int | None = None, keep_mismatched: bool = False) -> Records:
    """HH-RLHF pairs as ``{prompt, chosen, rejected, index}``.

    prompt: the dialogue up to and including the last ``\\n\\nAssistant:``; chosen /
    rejected: the text after it without the leading space. Pairs whose two prefixes
    differ are skipped (counted in ``.skipped["prefix_mismatch"]``) unless
    keep_mismatched, which keeps them with ``prefix_mismatch: True`` and the chosen
    prefix as prompt; pairs with an empty response are skipped ("empty_response").
    """
    path = Path(path) if path else shared_data_dir() / "hh_rlhf" / "harmless_base.jsonl.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    out, skipped = [], {"prefix_mismatch": 0, "empty_response": 0}
    for i, obj in _iter_jsonl(path, opener):
        if limit is not None and len(out) >= limit:
            break
        parts = {}
        for key in ("chosen", "rejected"):
            text = _field(obj, key, path, i)
            cut = text.rfind(HH_SEPARATOR)
            if cut < 0:
                raise DataError(path, i, f"'{key}' has no '\\n\\nAssistant:' turn")
            cut += len(HH_SEPARATOR)
            parts[key] = (text[:cut], text[cut:].removeprefix(" "))
        mismatch = parts["chosen"][0] != parts["rejected"][0]
        if mismatch and not keep_mismatched:
            skipped["prefix_mismatch"] += 1
            continue
        if not parts["chosen"][1].strip() or not parts["rejected"][1].strip():
            skipped["empty_response"] += 1
            continue
        rec = {"prompt": parts["chosen"][0], "chosen": parts["chosen"][1], "rejected": parts["rejected"][1], "index": i}
        if mismatch:
            rec["prefix_mismatch"] = True
        out.append(rec)
    return Records(out, skipped)


# ----------------------------------------------------------------------------- QA-Feedback


def _qa_paths(path):
    folder = Path(path) if path else shared_data_dir() / "qa_feedback"
    return (folder / "feedback.json", folder / "sft.json") if folder.is_dir() else (folder, folder.parent / "sft.json")


def qa_prompt(question: str, passages: list[list[str]]) -> str:
    """FineGrainedRLHF's policy input: ``question: Q context: wikipage: T text: P | wikipage: ...``."""
    ctx = " | ".join(f"wikipage: {p[0]} text: {' '.join(p[1:])}" for p in passages)
    return f"question: {question} context: {ctx}"


def _load_qa(path):
    fb_path, sft_path = _qa_paths(path)
    records = _read_json(fb_path)
    if not isinstance(records, list):
        raise DataError(fb_path, None, "expected a JSON list of records")
    sft_text = {}
    if sft_path.is_file():
        sft_text = {s.get("question"): s.get("text") for s in _read_json(sft_path) if isinstance(s, dict)}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(fb_path, i, "record is not a JSON object")
        for key in ("passages", "prediction 1", "feedback", "preference"):
            _field(r, key, fb_path, i, lambda v, *_: v)
        _field(r, "question", fb_path, i)
        prompt = sft_text.get(r["question"]) or qa_prompt(r["question"], r["passages"])
        yield fb_path, i, r, prompt


def load_qa_feedback_preferences(path=None) -> Records:
    """Pairwise preferences ``{prompt, chosen, rejected, question_id, chosen_index, rejected_index}``.

    Six judgements per question in the order 1v2, 1v3, 1v4, 2v3, 2v4, 3v4; 1 = the first
    answer is preferred, 2 = the second, 0 = tie (dropped, counted in ``.skipped["tie"]``).
    """
    out, skipped = [], {"tie": 0}
    for fb_path, i, r, prompt in _load_qa(path):
        prefs = r["preference"]
        if not isinstance(prefs, list) or len(prefs) != 6:
            raise DataError(fb_path, i, f"'preference' must be a list of 6 judgements, got {prefs!r}")
        for (a, b), p in zip(PAIR_ORDER, prefs):
            if p not in (0, 1, 2):
                raise DataError(fb_path, i, f"preference for {a}v{b} is {p!r}; expected 0, 1 or 2")
            if p == 0:
                skipped["tie"] += 1
                continue
            win, lose = (a, b) if p == 1 else (b, a)
            out.append({
                "prompt": prompt, "question_id": i,
                "chosen": _check_text(r[f"prediction {win}"], fb_path, i, f"prediction {win}"),
                "rejected": _check_text(r[f"prediction {lose}"], fb_path, i, f"prediction {lose}"),
                "chosen_index": win, "rejected_index": lose,
            })
    return Records(out, skipped)


def check_spans(path, i, response: str, errors: list[dict]) -> list[dict]:
    """Validate ``{start, end, error type}`` dicts against ``response``; returns the span records."""
    spans = []
    for e in errors:
        etype = e.get("error type", e.get("error_type"))
        if etype in C1_TYPES:
            category = "C1"
        elif etype in C2_TYPES:
            category = "C2"
        else:
            raise DataError(path, i, f"unknown error type {etype!r}; expected one of {C1_TYPES + C2_TYPES}")
        s, t = e.get("start"), e.get("end")
        if not (isinstance(s, int) and isinstance(t, int) and 0 <= s < t <= len(response)):
            raise DataError(path, i, f"span ({s}, {t}) is outside the response of {len(response)} characters")
        if "text" in e and e["text"] != response[s:t]:
            raise DataError(path, i, f"span ({s}, {t}) reads {response[s:t]!r}, not {e['text']!r}")
        spans.append({"start": s, "end": t, "error_type": etype, "category": category,
                      "text": response[s:t], "explanation": e.get("explanation", "")})
    return sorted(spans, key=lambda x: (x["start"], x["end"]))


def load_qa_feedback_spans(path=None) -> list[dict]:
    """Fine-grained feedback on ``prediction 1``, one record per question.

    ``{question_id, question, prompt, response, spans, missing_info, has_missing_info, corrected}``
    with spans ``{start, end, error_type, category ("C1"|"C2"), text, explanation}``
    checked to lie inside the response, and missing_info (C3) entries
    ``{error_type, passage_id, sentence_ids, text}`` where text joins the passage
    sentences named: passage ``passages[passage_id - 1]``, sentence ``passage[id]`` (1-based
    into the sentences, as in the repo's ``create_comp_rm_files.py``; 3 entries use 0, the title).
    """
    out = []
    for fb_path, i, r, prompt in _load_qa(path):
        response = _check_text(r["prediction 1"], fb_path, i, "prediction 1")
        fb = r["feedback"]
        spans = check_spans(fb_path, i, response, fb.get("errors", []))
        missing = []
        for m in fb.get("missing-info", []):
            pid, sids = m.get("passage_id"), m.get("sentence_id", [])
            if not isinstance(pid, int) or not 1 <= pid <= len(r["passages"]):
                raise DataError(fb_path, i, f"missing-info passage_id {pid!r} is not one of the {len(r['passages'])} passages")
            passage = r["passages"][pid - 1]
            if any(not isinstance(s, int) or not 0 <= s < len(passage) for s in sids):
                raise DataError(fb_path, i, f"missing-info sentence ids {sids} outside passage {pid}")
            missing.append({"error_type": m.get("error type"), "passage_id": pid, "sentence_ids": list(sids),
                            "text": " ".join(passage[s] for s in sids)})
        out.append({"question_id": i, "question": r["question"], "prompt": prompt, "response": response,
                    "spans": spans, "missing_info": missing, "has_missing_info": bool(missing),
                    "corrected": fb.get("corrected-prediction", "")})
    return out


# ----------------------------------------------------------------------------- Davidson tweets


def load_davidson(path=None) -> list[dict]:
    """Tweets ``{id, tweet, class, toxic, hate_speech, offensive_language, neither, count}``.

    class: 0 hate speech, 1 offensive, 2 neither (crowd majority); toxic = class in (0, 1).
    """
    path = Path(path) if path else shared_data_dir() / "davidson_tweets" / "labeled_data.csv"
    out = []
    with _open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"class", "tweet", "count", "hate_speech", "offensive_language", "neither"}
        if not need <= set(reader.fieldnames or []):
            raise DataError(path, None, f"CSV header lacks {sorted(need - set(reader.fieldnames or []))}")
        for i, row in enumerate(reader):
            try:
                counts = {k: int(row[k]) for k in ("count", "hate_speech", "offensive_language", "neither", "class")}
            except (TypeError, ValueError):
                raise DataError(path, i, "non-integer label columns") from None
            if counts["class"] not in (0, 1, 2):
                raise DataError(path, i, f"class {counts['class']} is not 0, 1 or 2")
            out.append({"id": i, "tweet": _check_text(row["tweet"], path, i, "tweet"),
                        "toxic": counts["class"] in (0, 1), **counts})
    return out


def tweet_opening(tweet: str, n_words: int = 5) -> str | None:
    """The first n_words words of a tweet without RT markers, @mentions, links, quotes and '#'; None if shorter."""
    words = []
    for w in html.unescape(tweet).split():
        w = w.strip("\"'“”!:").lstrip("#")
        if w and w != "RT" and not w.startswith(("@", "http")):
            words.append(w)
    return " ".join(words[:n_words]) if len(words) >= n_words else None


def provocative_prompts(n: int = 64, seed: int = 0, n_words: int = 5, classes=(1,), path=None, records=None) -> list[str]:
    """Openings of offensive tweets (class 1 by default) as PPO prompts for detoxification, deduplicated.

    records: already loaded ``load_davidson`` records (else read from ``path``).
    """
    records = load_davidson(path) if records is None else records
    openings = sorted({o for r in records if r["class"] in classes if (o := tweet_opening(r["tweet"], n_words))})
    random.Random(seed).shuffle(openings)
    return openings[:n]


# ----------------------------------------------------------------------------- split, demo set


def split(records: list[dict], eval_fraction: float, seed: int = 0, key: str | None = None) -> tuple[list, list]:
    """Deterministic (train, eval) split by group, keeping the input order within each side.

    key: the record field that defines a group (default: "question_id" if records have
    it, else "prompt", else each record alone). Groups are ranked by sha256(seed, key)
    and the first round(eval_fraction * n_groups) go to eval, so the result does not
    depend on the order of the records and no group is on both sides.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    if key is None and records:
        key = next((k for k in ("question_id", "prompt") if k in records[0]), None)
    groups = [json.dumps(r[key], sort_keys=True, default=str) if key else str(i) for i, r in enumerate(records)]
    unique = sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held_out = set(unique[: round(eval_fraction * len(unique))])
    train = [r for r, g in zip(records, groups) if g not in held_out]
    evals = [r for r, g in zip(records, groups) if g in held_out]
    return train, evals


@dataclass
class DemoSet:
    """The built-in demo set (written for this project): QA-style span records, preference pairs, detox prompts."""

    spans: list[dict]  # same shape as load_qa_feedback_spans records
    preferences: list[dict]  # {prompt, chosen, rejected, question_id}
    detox_prompts: list[str]


def load_demo_set(folder=None) -> DemoSet:
    """Read ``core/demo_data/demo.jsonl`` and ``detox_prompts.jsonl`` (works without ../shared)."""
    folder = Path(folder) if folder else demo_data_dir()
    path = folder / "demo.jsonl"
    spans, prefs = [], []
    for i, obj in _iter_jsonl(path):
        _field(obj, "prompt", path, i)
        response = _field(obj, "response", path, i)
        spans.append({"question_id": i, "question": obj.get("question", obj["prompt"]), "prompt": obj["prompt"],
                      "response": response, "spans": check_spans(path, i, response, obj.get("spans", [])),
                      "missing_info": [{"error_type": "Missing", "text": t} for t in obj.get("missing_info", [])],
                      "has_missing_info": bool(obj.get("missing_info")), "corrected": obj.get("corrected", "")})
        if "chosen" in obj or "rejected" in obj:  # a pair needs both
            prefs.append({"prompt": obj["prompt"], "question_id": i, "chosen": _field(obj, "chosen", path, i),
                          "rejected": _field(obj, "rejected", path, i)})
    detox_path = folder / "detox_prompts.jsonl"
    detox = [_field(o, "prompt", detox_path, i) for i, o in _iter_jsonl(detox_path)]
    return DemoSet(spans=spans, preferences=prefs, detox_prompts=detox)
