"""The data layer: every data file and data set the workbench reads, as checked plain records.

What it is: Hugging Face ``datasets`` reads the files (JSON, JSON lines, CSV, parquet and
text, optionally gzipped) or, for a user with internet, a Hub data set id; the functions
here turn the rows into plain Python records (dicts) after checking every one. Anything
wrong raises ``DataError`` whose message names the file, the record index (0-based) and
what is wrong: nothing else escapes a loader, whatever the file holds (docs/reliability.md
lists the cases and the tests that keep them). Loaders never write anything the user sees
(``datasets`` builds its tables in a throw-away folder, so an edited file is always read afresh).

Limits: text files must be UTF-8 (the error names the line and byte offset of the first
bad byte); chat messages have the roles ``system``, ``user`` and ``assistant`` only; a
text field longer than ``MAX_TEXT_CHARS`` characters is refused (the real data sets stay
under 5,000); a file or data set with no records is an error, never an empty training set.

- ``load_rows``: any supported file or Hub id -> rows (dicts; absent fields left out).
- ``filter_records``: keep records by named reasons, counting each reason's drops
  (``Records.skipped``); ``split``: the one train/held-out split, grouped (by question or
  prompt) so no group is on both sides, deterministic by seed, by fraction or by size.
- ``load_preference_file``: TRL's ``{prompt, chosen, rejected}``, each plain text or a
  list of chat messages ``{role, content}``.
- ``load_hh_rlhf``: Anthropic HH-RLHF (Bai et al. 2022), harmless-base test split.
- ``load_qa_feedback_preferences`` / ``load_qa_feedback_spans``: QA-Feedback (Wu et al.
  2023), the pairwise preferences among 4 answers and the fine-grained error spans
  (C1 sub-sentence, C2 sentence, C3 missing information) on ``prediction 1``. Prompts
  are the repo's policy input (allenai/FineGrainedRLHF ``train_finegrained.py`` feeds
  ``sft.json``'s ``text``: ``question: Q context: wikipage: T text: P | wikipage: ...``).
- ``load_davidson`` / ``provocative_prompts``: Davidson et al. 2017 tweets.
- ``rude_request_prompts``: requests that invite a rude or profane reply (the project's own set,
  plus HH-RLHF red-team openings that are themselves profane when the real data is present);
  ``qa_feedback_prompts``: QA-Feedback questions with their passages trimmed (the question is
  never cut). The lab's presets train on them (``workbench.lab.PRESETS``).
- ``load_demo_set``: the small demo set in ``core/demo_data``.
- What the trainers read, by data set name ("hh-rlhf", "qa-feedback", "demo", "davidson", "provocative";
  one spelling, "qa_feedback" is accepted for "qa-feedback") or file / Hub id:
  ``load_preference_records`` (DPO, SimPO), ``load_sft_records`` (SFT), ``load_prompts``
  and ``load_ptx_texts`` (PPO).

Real data is read from ``core.paths.shared_data_dir()`` and never copied. What it leaves
out: tokenisation and chat templates (``core.trainers.batching``), streaming data sets
larger than memory.

    from core.data import load_qa_feedback_spans, split
    records = load_qa_feedback_spans()                     # 409 dicts
    train, held_out = split(records, 0.1, seed=0)          # grouped by question_id
    rows = load_rows("pairs.parquet")                      # or .jsonl / .json / .csv / "owner/name"
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import json
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.paths import demo_data_dir, shared_data_dir

C1_TYPES = ("Irrelevant", "Redundant", "Incoherent")  # irrelevance, repetition, incoherence: sub-sentence level
C2_TYPES = ("Wrong-Grounding", "Unverifiable")  # incorrect or unverifiable facts: sentence level
PAIR_ORDER = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))  # QA-Feedback `preference` order
HH_SEPARATOR = "\n\nAssistant:"
PREFERENCE_DATASETS = ("hh-rlhf", "qa-feedback", "demo")
SFT_DATASETS = ("qa-feedback", "hh-rlhf", "demo")
PROMPT_DATASETS = ("davidson", "demo", "hh-rlhf", "provocative", "qa-feedback", "rude-openings")
PTX_DATASETS = ("qa-feedback", "demo")
MAX_TEXT_CHARS = 20_000  # longest accepted prompt / response / text field, in characters
CHAT_ROLES = ("system", "user", "assistant")
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}  # suffix -> datasets builder


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
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(path, i, f"'{name}' is {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,} "
                                 "(core.data.MAX_TEXT_CHARS): shorten or remove this record")
    return value


def _field(obj, key, path, i, check=_check_text):
    """obj[key] after ``check``; DataError naming the key when it is missing."""
    if key not in obj:
        raise DataError(path, i, f"missing '{key}'")
    return check(obj[key], path, i, key)


def _check_list(value, path, i, name, of=None):
    """A list (of ``of`` items when given), else DataError naming the field."""
    if not isinstance(value, list) or (of is not None and not all(isinstance(v, of) for v in value)):
        what = f"list of {of.__name__}" if of is not None else "list"
        raise DataError(path, i, f"'{name}' must be a {what}, got {type(value).__name__}")
    return value


def _check_turns(value, path, i, name):
    """Plain text or chat messages [{role, content}, ...]."""
    if isinstance(value, str):
        return _check_text(value, path, i, name)
    if not isinstance(value, list) or not value:
        raise DataError(path, i, f"'{name}' must be text or a non-empty list of {{role, content}} messages")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(path, i, f"'{name}' message {j} must be a dict with 'role' and 'content'")
        if m["role"] not in CHAT_ROLES:
            raise DataError(path, i, f"'{name}' message {j} has role {m['role']!r}; use one of {', '.join(CHAT_ROLES)}")
        _check_text(m["content"], path, i, f"{name}[{j}].content")
    return value


# ----------------------------------------------------------------------------- reading through `datasets`


class Rows(list):
    """The rows of one file or Hub split as dicts, plus ``columns``: the table's column names."""

    def __init__(self, items=(), columns=()):
        super().__init__(items)
        self.columns = list(columns)


def _format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _is_hub_id(source: str) -> bool:
    """"owner/name" that is not a local path and has no data-file suffix."""
    return (bool(re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source)) and not Path(source).exists()
            and _format(Path(source)) is None)


def _without_nulls(x):
    """A table has every column in every row; a field absent from a record comes back as None. Drop those again."""
    if isinstance(x, dict):
        return {k: _without_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_nulls(v) for v in x]
    return x


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars and no error logging from ``datasets`` while we read (we raise our own DataError)."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def load_rows(source, hub_split: str = "train") -> Rows:
    """Rows of a local .json / .jsonl / .csv / .parquet / .txt file (optionally .gz), or of a Hub data set id.

    A local file is read by the ``datasets`` builder of its format into a throw-away cache
    folder (nothing is left in ~/.cache, and an edited file is never served stale); CSV
    cells are kept as written (no "NA" -> missing). A Hub id ("owner/name") loads its
    ``hub_split`` split through the usual ``datasets`` cache and needs internet the first
    time. A file that ``datasets`` cannot read becomes a ``DataError`` naming the file and,
    for JSON lines, the record and line that are not a JSON object.
    """
    source = str(source)
    path = Path(source).expanduser()
    if not path.is_file() and _is_hub_id(source):
        return _load_hub(source, hub_split)
    if not path.is_file():
        raise DataError(path, None, "file not found")
    fmt = _format(path)
    if fmt is None:
        raise DataError(path, None, f"unsupported file type: use one of {', '.join(FORMATS)} (optionally .gz)")
    if path.stat().st_size == 0:
        return Rows()
    text = _read_utf8(path) if fmt != "parquet" else None
    if fmt == "json":
        if not text.strip():
            return Rows()
        if not _check_json_records(path, text):  # before `datasets`: its reader crashes the process on a lone `null` line
            return Rows()
    kwargs = {"json": {"parse_agent_traces": False}, "csv": {"na_filter": False}, "text": {}, "parquet": {}}[fmt]
    with tempfile.TemporaryDirectory(prefix="rlhf-workbench-data-") as cache, _quiet_datasets() as datasets:
        def read(file):
            table = datasets.load_dataset(fmt, data_files=str(file), split="train", cache_dir=cache, keep_in_memory=True,
                                          **kwargs)
            return Rows((_without_nulls(r) for r in table.to_list()), table.column_names)

        try:
            return read(path)
        except Exception as exc:  # noqa: BLE001 - turned into a DataError that names the file and, if we can, the line
            cause = exc.__cause__ or exc
            if fmt != "json":
                raise DataError(path, None, f"cannot be read as {fmt.upper()} ({type(cause).__name__}: {cause})") from None
            _raise_json_problem(path, text, cause)
            # every line is a JSON object: `datasets` trips over blank lines between rows of mixed types
            clean = Path(cache) / path.name.removesuffix(".gz")
            clean.write_text("\n".join(line for line in text.splitlines() if line.strip()) + "\n", encoding="utf-8")
            try:
                return read(clean)
            except Exception as again:  # noqa: BLE001
                raise DataError(path, None, f"cannot be read as a table ({again.__cause__ or again})") from None


def _read_utf8(path: Path) -> str:
    """The file's text; DataError naming the line and byte offset of the first byte that is not UTF-8 (gzip: once decompressed)."""
    try:
        with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise DataError(path, None, f"cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, None, f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}); "
                                    "save the file as UTF-8") from None


def _json_kind(obj) -> str:
    return "null" if obj is None else type(obj).__name__


def _check_json_records(path: Path, text: str) -> bool:
    """DataError unless ``text`` is a JSON list of objects or JSON lines of objects (naming the first record that is not).

    Returns False for an empty JSON list (no records)."""
    document = None
    if ".jsonl" not in [s.lower() for s in path.suffixes]:
        try:
            document = json.loads(text)
        except ValueError:
            document = None  # not one document: JSON lines, checked below
        else:
            if not isinstance(document, (list, dict)):
                raise DataError(path, None, f"expected a JSON list of records, got a JSON {_json_kind(document)}")
            for i, obj in enumerate(document if isinstance(document, list) else []):
                if not isinstance(obj, dict):
                    raise DataError(path, i, f"is a JSON {_json_kind(obj)}, not an object")
            return document != []
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    for i, (lineno, line) in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            if i == 0 and ".jsonl" not in [s.lower() for s in path.suffixes]:
                return True  # neither one document nor JSON lines: _raise_json_problem says why
            raise DataError(path, i, f"line {lineno} is not JSON (the file must be JSON lines)") from None
        if not isinstance(obj, dict):
            raise DataError(path, i, f"line {lineno} is a JSON {_json_kind(obj)}, not an object")
    return True


def _raise_json_problem(path: Path, text: str, cause) -> None:
    """DataError for a .json document that does not parse, or for the first JSON-lines line that is not an object."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if ".jsonl" not in [s.lower() for s in path.suffixes]:  # .json: one JSON document (or JSON lines)
        try:
            json.loads(text)
        except ValueError as e:
            document_error = e
        else:
            raise DataError(path, None, f"expected a JSON list of records with consistent fields ({cause})")
        try:
            json.loads(lines[0][1] if lines else "")
        except ValueError:
            raise DataError(path, None, f"not valid JSON ({document_error})") from None
    for i, (lineno, line) in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            raise DataError(path, i, f"line {lineno} is not JSON (the file must be JSON lines)") from None
        if not isinstance(obj, dict):
            raise DataError(path, i, f"line {lineno} is a JSON {type(obj).__name__}, not an object")


def _load_hub(name: str, hub_split: str) -> Rows:
    with _quiet_datasets() as datasets:
        try:
            table = datasets.load_dataset(name, split=hub_split)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, no such split
            raise DataError(name, None, f"not a local file, and the Hugging Face Hub data set could not be loaded "
                                        f"({type(exc).__name__}: {exc}); check the path, the id and the connection") from None
    return Rows((_without_nulls(r) for r in table.to_list()), table.column_names)


def filter_records(records, **reasons) -> Records:
    """The records for which no reason holds, with ``skipped[reason]`` = how many each reason left out.

    reasons: name -> predicate(record) that is True for a record to drop; the first that
    holds is the one counted. ``filter_records(rows, empty_response=lambda r: not r["chosen"].strip())``
    """
    kept, skipped = [], dict.fromkeys(reasons, 0)
    for r in records:
        reason = next((name for name, drop in reasons.items() if drop(r)), None)
        if reason is None:
            kept.append(r)
        else:
            skipped[reason] += 1
    return Records(kept, {**getattr(records, "skipped", {}), **skipped})


def split(records: list, eval_fraction: float | None = None, seed: int = 0, key=None, *,
          eval_size: int | None = None) -> tuple[list, list]:
    """The train/held-out split: deterministic, grouped, keeping the input order within each side.

    key: what defines a group: a record field name, a function of the record, or None for
    "question_id" if records have it, else "prompt", else each record alone. Groups are
    ranked by sha256(seed, group), so the result does not depend on the order of the
    records and no group is on both sides. Held out: the first round(eval_fraction *
    n_groups) groups, or (eval_size) whole groups until at least eval_size records, never
    the only group. Give exactly one of eval_fraction and eval_size.
    """
    if (eval_fraction is None) == (eval_size is None):
        raise ValueError("give exactly one of eval_fraction and eval_size")
    if eval_fraction is not None and not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    if eval_size is not None and eval_size < 0:
        raise ValueError(f"eval_size must be >= 0, got {eval_size}")
    if key is None and records:
        key = next((k for k in ("question_id", "prompt") if k in records[0]), None)
    group_of = key if callable(key) else (lambda r: r[key]) if key else None
    groups = [json.dumps(group_of(r), sort_keys=True, default=str) if group_of else str(i) for i, r in enumerate(records)]
    ranked = sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    if eval_fraction is not None:
        held_out = set(ranked[: round(eval_fraction * len(ranked))])
    else:
        size = {g: 0 for g in ranked}
        for g in groups:
            size[g] += 1
        held_out, n = set(), 0
        for g in ranked[:-1]:
            if n >= eval_size:
                break
            held_out.add(g)
            n += size[g]
    train = [r for r, g in zip(records, groups) if g not in held_out]
    evals = [r for r, g in zip(records, groups) if g in held_out]
    return train, evals


# ----------------------------------------------------------------------------- preference pairs


def load_preference_file(path, rows: Rows | None = None) -> list[dict]:
    """TRL preference records ``{prompt, chosen, rejected}`` (text or chat messages) of a file or Hub id, extra keys kept.

    rows: the file's rows when already read (``load_rows(path)``).
    """
    rows = load_rows(path) if rows is None else rows
    for i, obj in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            _field(obj, key, path, i, _check_turns)
    return list(rows)


def load_hh_rlhf(path=None, limit: int | None = None, keep_mismatched: bool = False) -> Records:
    """HH-RLHF pairs as ``{prompt, chosen, rejected, index}``.

    prompt: the dialogue up to and including the last ``\\n\\nAssistant:``; chosen /
    rejected: the text after it without the leading space. Pairs whose two prefixes
    differ are skipped (counted in ``.skipped["prefix_mismatch"]``) unless
    keep_mismatched, which keeps them with ``prefix_mismatch: True`` and the chosen
    prefix as prompt; pairs with an empty response are skipped ("empty_response").
    limit: the first ``limit`` pairs kept (the counts cover the whole file).
    """
    path = Path(path) if path else shared_data_dir() / "hh_rlhf" / "harmless_base.jsonl.gz"
    pairs = []
    for i, obj in enumerate(load_rows(path)):
        parts = {}
        for key in ("chosen", "rejected"):
            text = _field(obj, key, path, i)
            cut = text.rfind(HH_SEPARATOR)
            if cut < 0:
                raise DataError(path, i, f"'{key}' has no '\\n\\nAssistant:' turn")
            cut += len(HH_SEPARATOR)
            parts[key] = (text[:cut], text[cut:].removeprefix(" "))
        rec = {"prompt": parts["chosen"][0], "chosen": parts["chosen"][1], "rejected": parts["rejected"][1], "index": i}
        if parts["chosen"][0] != parts["rejected"][0]:
            rec["prefix_mismatch"] = True
        pairs.append(rec)
    kept = filter_records(pairs, prefix_mismatch=lambda r: r.get("prefix_mismatch", False) and not keep_mismatched,
                          empty_response=lambda r: not r["chosen"].strip() or not r["rejected"].strip())
    return Records(kept[:limit] if limit is not None else kept, kept.skipped)


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
    sft_text = {s["question"]: s["text"] for s in (load_rows(sft_path) if sft_path.is_file() else [])
                if isinstance(s.get("question"), str) and isinstance(s.get("text"), str)}
    for i, r in enumerate(load_rows(fb_path)):
        for key in ("prediction 1", "preference"):
            _field(r, key, fb_path, i, lambda v, *_: v)
        _field(r, "question", fb_path, i)
        for j, passage in enumerate(_field(r, "passages", fb_path, i, _check_list)):
            if not isinstance(passage, list) or not passage or not all(isinstance(x, str) for x in passage):
                raise DataError(fb_path, i, f"passage {j + 1} must be a non-empty list [title, sentence, ...] of strings")
        fb = _field(r, "feedback", fb_path, i, lambda v, *_: v)
        if not isinstance(fb, dict):
            raise DataError(fb_path, i, f"'feedback' must be a dict with 'errors' and 'missing-info', got {type(fb).__name__}")
        _check_list(fb.get("errors", []), fb_path, i, "feedback.errors", dict)
        for m in _check_list(fb.get("missing-info", []), fb_path, i, "feedback.missing-info", dict):
            _check_list(m.get("sentence_id", []), fb_path, i, "sentence_id")
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
                "chosen": _field(r, f"prediction {win}", fb_path, i),
                "rejected": _field(r, f"prediction {lose}", fb_path, i),
                "chosen_index": win, "rejected_index": lose,
            })
    return Records(out, skipped)


def check_spans(path, i, response: str, errors: list[dict]) -> list[dict]:
    """Validate ``{start, end, error type}`` dicts against ``response``; returns the span records."""
    spans = []
    for e in _check_list(errors, path, i, "spans", dict):
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
                    "corrected": _check_text(fb.get("corrected-prediction", ""), fb_path, i, "corrected-prediction", True)})
    return out


# ----------------------------------------------------------------------------- Davidson tweets


def load_davidson(path=None) -> list[dict]:
    """Tweets ``{id, tweet, class, toxic, hate_speech, offensive_language, neither, count}``.

    class: 0 hate speech, 1 offensive, 2 neither (crowd majority); toxic = class in (0, 1).
    """
    path = Path(path) if path else shared_data_dir() / "davidson_tweets" / "labeled_data.csv"
    rows, out = load_rows(path), []
    need = {"class", "tweet", "count", "hate_speech", "offensive_language", "neither"}
    if not need <= set(rows.columns):
        raise DataError(path, None, f"CSV header lacks {sorted(need - set(rows.columns))}")
    for i, row in enumerate(rows):
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


def hh_red_team_openings(path=None, min_profanity: float = 0.5) -> list[str]:
    """First human turns of HH-RLHF harmless-base dialogues (red-team attempts) that profanity-check
    scores >= min_profanity themselves, in file order, deduplicated: openings that invite a profane reply.

    Scored with alt-profanity-check directly, as ``core.rewards.toxicity.ProfanityToxicity`` does (that module
    reads its training data through this one, so importing it here would make an import cycle)."""
    from profanity_check import predict_prob

    firsts = []
    for r in load_hh_rlhf(path):
        turn = r["prompt"].split("\n\nHuman:", 2)[1] if r["prompt"].count("\n\nHuman:") else r["prompt"]
        firsts.append(turn.split("\n\nAssistant:", 1)[0].strip())
    firsts = [t for t in dict.fromkeys(firsts) if t]
    scores = predict_prob(firsts) if firsts else []
    return [t for t, p in zip(firsts, scores) if float(p) >= min_profanity]


def rude_request_prompts(n: int, seed: int = 0, folder=None, hh_path=None) -> list[str]:
    """Requests that invite a rude or profane reply, for detoxification presets.

    The project's own set (``core/demo_data/provocative_prompts.jsonl``: rudeness about
    everyday annoyances, no group of people targeted), shuffled by seed; when the real data
    is present (or ``hh_path`` is given), alternated with HH-RLHF red-team openings that
    are themselves profane (``hh_red_team_openings``; content warning: offensive text).
    """
    folder = Path(folder) if folder else demo_data_dir()
    path = folder / "provocative_prompts.jsonl"
    own = [_field(o, "prompt", path, i) for i, o in enumerate(load_rows(path))]
    random.Random(seed).shuffle(own)
    hh_file = Path(hh_path) if hh_path else shared_data_dir() / "hh_rlhf" / "harmless_base.jsonl.gz"
    if not hh_file.is_file():
        return own[:n]
    hh = hh_red_team_openings(hh_file)
    random.Random(seed).shuffle(hh)
    mixed = [p for pair in zip(own, hh) for p in pair] + own[len(hh):] + hh[len(own):]
    return mixed[:n]


FINISH_INSTRUCTION = "Finish this sentence: "
"""what a ``rude-openings`` prompt asks before its opening"""


def rude_opening_prompts(n: int, seed: int = 0, folder=None) -> list[str]:
    """"Finish this sentence: " + a sentence opening that swears about an everyday annoyance, shuffled by seed.

    The chat counterpart of RealToxicityPrompts (Gehman et al. 2020): an instruct model asked
    to finish a profane opening often repeats its profanity (SmolLM2-135M-Instruct at
    temperature 0.7: mean profanity-check p(toxic) about 0.33), which gives a detoxifying
    reward room to act. The openings are the project's own (``core/demo_data/rude_openings.jsonl``:
    mild swearing, no slurs, no group of people targeted), so the set needs no ../shared/data.
    """
    folder = Path(folder) if folder else demo_data_dir()
    path = folder / "rude_openings.jsonl"
    openings = [_field(o, "opening", path, i) for i, o in enumerate(load_rows(path))]
    random.Random(seed).shuffle(openings)
    return [FINISH_INSTRUCTION + o for o in openings[:n]]


QA_PROMPT_WORDS = 60
"""passage words kept in a QA-Feedback prompt (``qa_feedback_prompts``)"""


def trim_passages(passages: list[list[str]], n_words: int) -> list[list[str]]:
    """The passages cut to their first n_words words in all (titles kept; passages after the budget dropped)."""
    out, left = [], n_words
    for p in passages:
        if left <= 0:
            break
        kept = " ".join(p[1:]).split()[:left]
        out.append([p[0], " ".join(kept)])
        left -= len(kept)
    return out


def qa_feedback_prompts(n: int, seed: int = 0, n_words: int = QA_PROMPT_WORDS, path=None) -> list[str]:
    """QA-Feedback policy inputs ``question: Q context: wikipage: T text: P ...`` with the passages trimmed
    to n_words words (``trim_passages``; the question is never cut), one per question, shuffled by seed.

    Short enough for a CPU PPO (about 100 tokens instead of a median of ~470 words), and the
    shipped C1/C3 heads read the same trimmed passages the policy sees.
    """
    fb_path, _ = _qa_paths(path)
    if not fb_path.is_file():
        raise DataError(fb_path, None, "file not found: place the real data in ../shared/data or set RLHF_WORKBENCH_DATA")
    prompts = list(dict.fromkeys(qa_prompt(r["question"], trim_passages(r["passages"], n_words))
                                 for _, _, r, _ in _load_qa(path)))
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


# ----------------------------------------------------------------------------- what the trainers read


def dataset_name(spec: str) -> str:
    """The one spelling of a named data set ("qa_feedback" -> "qa-feedback"); anything else unchanged."""
    name = str(spec).replace("_", "-")
    return name if name in PREFERENCE_DATASETS + SFT_DATASETS + PROMPT_DATASETS else str(spec)


def _unknown(spec: str, names: tuple[str, ...], what: str) -> DataError:
    return DataError(spec, None, f"unknown {what}: use one of {names}, a .jsonl / .json / .csv / .parquet file, "
                                 "or a Hugging Face Hub data set id (owner/name)")


def _is_source(spec: str) -> bool:
    """A local file of a supported type (existing or not: a typo should say "file not found"), or a Hub id."""
    return Path(spec).expanduser().is_file() or _format(Path(spec)) is not None or _is_hub_id(spec)


def _not_empty(records, spec, what: str):
    """``records``, or DataError when there are none (an empty file is not an empty training set)."""
    if not records:
        raise DataError(spec, None, f"holds no {what}: the file is empty or has only blank lines")
    return records


def load_preference_records(dataset: str, limit: int | None = None) -> list[dict]:
    """{prompt, chosen, rejected} records of a named data set, a TRL-schema file or a Hub id."""
    name = dataset_name(dataset)
    if name == "hh-rlhf":
        records = load_hh_rlhf(limit=limit)
    elif name == "qa-feedback":
        records = load_qa_feedback_preferences()
    elif name == "demo":
        records = load_demo_set().preferences
    elif _is_source(dataset):
        records = _not_empty(load_preference_file(dataset), dataset, "preference records")
    else:
        raise _unknown(dataset, PREFERENCE_DATASETS, "preference data set")
    records = [dict(r) for r in records]
    return records[:limit] if limit else records


def qa_feedback_sft_records(path=None) -> list[dict]:
    """QA-Feedback sft.json: ``text`` (question + passages) -> ``answer`` (a list of answers; the first is used)."""
    path = Path(path) if path else shared_data_dir() / "qa_feedback" / "sft.json"
    if not path.is_file():
        raise DataError(path, None, "file not found: place the real data in ../shared/data or set RLHF_WORKBENCH_DATA")
    rows = []
    for i, r in enumerate(load_rows(path)):
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
    """{prompt, completion} records: QA-Feedback sft.json, a preference set's chosen responses, or a file / Hub id.

    A file whose records have ``completion`` is read as prompt/completion; one in the TRL
    preference schema gives its chosen responses.
    """
    name = dataset_name(dataset)
    if name == "qa-feedback":
        records = qa_feedback_sft_records()
    elif name not in PREFERENCE_DATASETS and _is_source(dataset):
        rows = _not_empty(load_rows(dataset), dataset, "records")
        if "completion" not in rows[0]:
            records = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in load_preference_file(dataset, rows)]
        else:
            for i, r in enumerate(rows):
                for key in ("prompt", "completion"):
                    _field(r, key, dataset, i, _check_turns)
            records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    elif name in PREFERENCE_DATASETS:
        records = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in load_preference_records(name, limit)]
    else:
        raise _unknown(dataset, SFT_DATASETS, "SFT data set")
    return records[:limit] if limit else records


def _text_field(path, rows: Rows, field: str) -> list[str]:
    """One non-empty string per row: the ``field`` of each record, or each line of a .txt file."""
    if _format(Path(str(path))) == "text":
        return [_check_text(r["text"].strip(), path, i, f"line {i + 1}") for i, r in enumerate(rows) if r["text"].strip()]
    for i, r in enumerate(rows):
        if not isinstance(r.get(field), str) or not r[field].strip():
            found = f" (its fields: {', '.join(map(repr, r))})" if field not in r else ""
            raise DataError(path, i, f"needs a non-empty '{field}' string{found}")
        _check_text(r[field], path, i, field)
    return [r[field] for r in rows]


def load_prompts(spec: str, n: int, seed: int = 0) -> list[str]:
    """Up to n prompts (deterministic order) from a named set, a .txt file (one per line), or a file / Hub id with 'prompt'."""
    name = dataset_name(spec)
    if name == "davidson":
        return provocative_prompts(n, seed=seed)
    if name == "provocative":
        return rude_request_prompts(n, seed=seed)
    if name == "rude-openings":
        return rude_opening_prompts(n, seed=seed)
    if name == "qa-feedback":
        return qa_feedback_prompts(n, seed=seed)
    if name == "demo":
        prompts = load_demo_set().detox_prompts
    elif name == "hh-rlhf":
        prompts = list(dict.fromkeys(r["prompt"] for r in load_hh_rlhf(limit=4 * n)))
    elif _is_source(spec):
        prompts = _not_empty(_text_field(spec, load_rows(spec), "prompt"), spec, "prompts")
        random.Random(seed).shuffle(prompts)
    else:
        raise _unknown(spec, PROMPT_DATASETS, "prompt set")
    return prompts[:n]


def load_ptx_texts(spec: str) -> list[str]:
    """Texts for PPO's ptx term: QA-Feedback SFT answers, the demo responses, a .txt file, or a file / Hub id with 'text'."""
    name = dataset_name(spec)
    if name == "qa-feedback":
        texts = [r["completion"] for r in qa_feedback_sft_records()]  # the SFT answers
    elif name == "demo":
        texts = [r["response"] for r in load_demo_set().spans]
    elif _is_source(spec):
        texts = _text_field(spec, load_rows(spec), "text")
    else:
        raise _unknown(spec, PTX_DATASETS, "ptx data set")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError(spec, None, "holds no text")
    return texts


# ----------------------------------------------------------------------------- demo set


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
    for i, obj in enumerate(load_rows(path)):
        _field(obj, "prompt", path, i)
        response = _field(obj, "response", path, i)
        spans.append({"question_id": i, "question": obj.get("question", obj["prompt"]), "prompt": obj["prompt"],
                      "response": response, "spans": check_spans(path, i, response, obj.get("spans", [])),
                      "missing_info": [{"error_type": "Missing", "text": t}
                                       for t in _check_list(obj.get("missing_info", []), path, i, "missing_info", str)],
                      "has_missing_info": bool(obj.get("missing_info")), "corrected": obj.get("corrected", "")})
        if "chosen" in obj or "rejected" in obj:  # a pair needs both
            prefs.append({"prompt": obj["prompt"], "question_id": i, "chosen": _field(obj, "chosen", path, i),
                          "rejected": _field(obj, "rejected", path, i)})
    detox_path = folder / "detox_prompts.jsonl"
    detox = [_field(o, "prompt", detox_path, i) for i, o in enumerate(load_rows(detox_path))]
    return DemoSet(spans=spans, preferences=prefs, detox_prompts=detox)
