"""Exports of a feedback project in the formats the ecosystem reads, and imports of labelled data sets.

Exports (all plain records; ``write_jsonl`` / ``export_project`` write them):

- ``preference_pairs``: TRL preference records ``{prompt, chosen, rejected}`` (what
  ``core.data.load_preference_file``, the DPO/SimPO/reward trainers and TRL read), from
  every ranking: all K-choose-2 strictly ordered pairs (``mode="all"``, InstructGPT), or
  each top-ranked response against every worse one (``mode="best_vs_rest"``). Ties give
  no pair. Each annotator's ranking gives its own pairs; extra keys say who and where.
- ``ranking_records``: one K-wise record per ranking ``{prompt, responses, ranks}``
  (ranks[i] of responses[i], 1 = best, equal = tie) plus ``ordered`` (best first).
- ``qa_feedback_records``: QA-Feedback JSON (Wu et al. 2023) that
  ``core.data.load_qa_feedback_spans`` and so ``core.trainers.finegrained`` read
  unchanged: one record per reviewed response (per annotator), that response as
  ``prediction 1`` (the one the spans are on), the other K-1 as ``prediction 2..K``,
  ``feedback.errors`` with the C1/C2 spans, ``feedback.corrected-prediction``, and
  ``preference`` (the pairs 1v2, 1v3, ... from the same annotator's ranking; 0 = tie or
  unranked; upstream's six-judgement order when K = 4). ``sft.json`` beside it maps each
  question to the exact prompt. C3 marks (missing information) have no place in the
  upstream schema (it points at passage sentences); they go to ``studio-missing-info``.
- ``sft_records``: the corrections as ``{prompt, completion}`` (TRL prompt-completion).
- ``to_dataset``: a Hugging Face ``datasets.Dataset``, one row per (item, annotator)
  with every label; ``export_project`` saves it with ``save_to_disk`` and as parquet.

Imports (pre-labelled items, so the studio is useful before anyone labels):
``import_qa_feedback`` (the four answers, the first one's spans and correction, a
ranking from the six pairwise judgements) and ``import_hh_rlhf`` (chosen vs rejected).

What it leaves out: Argilla / Label Studio formats, pushing to the Hub.

    from core.feedback.export import export_project
    paths = export_project(store, project_id, "exports/demo")   # every format in one folder
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from core import data
from core.feedback.agreement import project_agreement
from core.feedback.store import FLAG_NAMES, FeedbackError, FeedbackStore, check_ranks
from core.paths import shared_data_dir

MODES = ("all", "best_vs_rest")


def _by_id(store: FeedbackStore, project_id: int) -> dict[int, dict]:
    return {it["id"]: it for it in store.items(project_id)}


def ordered_pairs(ranks: list[int], mode: str = "all") -> list[tuple[int, int]]:
    """(winner, loser) response indices of a ranking with ties: every strictly ordered pair ("all"), or
    every response of the best rank against each worse one ("best_vs_rest")."""
    if mode not in MODES:
        raise FeedbackError(f"pair mode must be one of {MODES}, got {mode!r}")
    best = min(ranks)
    pairs = []
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] == ranks[j]:
            continue
        w, l = (i, j) if ranks[i] < ranks[j] else (j, i)
        if mode == "all" or ranks[w] == best:
            pairs.append((w, l))
    return pairs


# ----------------------------------------------------------------------------- exports


def preference_pairs(store: FeedbackStore, project_id: int, mode: str = "all") -> list[dict]:
    """TRL ``{prompt, chosen, rejected}`` records from every ranking (plus item_id, annotator, indices)."""
    items = _by_id(store, project_id)
    out = []
    for r in store.labels(project_id)["rankings"]:
        it = items[r["item_id"]]
        for w, l in ordered_pairs(r["ranks"], mode):
            out.append({"prompt": it["prompt"], "chosen": it["responses"][w], "rejected": it["responses"][l],
                        "item_id": it["id"], "annotator": r["annotator"], "chosen_index": w, "rejected_index": l})
    return out


def ranking_records(store: FeedbackStore, project_id: int) -> list[dict]:
    """One K-wise record per ranking: ``{prompt, responses, ranks, ordered, item_id, annotator}``."""
    items = _by_id(store, project_id)
    out = []
    for r in store.labels(project_id)["rankings"]:
        it = items[r["item_id"]]
        order = sorted(range(len(r["ranks"])), key=lambda i: (r["ranks"][i], i))
        out.append({"prompt": it["prompt"], "responses": it["responses"], "ranks": r["ranks"],
                    "ordered": [it["responses"][i] for i in order], "item_id": it["id"], "annotator": r["annotator"]})
    return out


def _pair_judgements(ranks: list[int] | None, order: list[int]) -> list[int]:
    """QA-Feedback ``preference``: for the predictions 1..K (response indices ``order``), pairs 1v2, 1v3, ..."""
    out = []
    for a, b in itertools.combinations(range(len(order)), 2):
        if ranks is None or ranks[order[a]] == ranks[order[b]]:
            out.append(0)
        else:
            out.append(1 if ranks[order[a]] < ranks[order[b]] else 2)
    return out


def qa_feedback_records(store: FeedbackStore, project_id: int) -> tuple[list[dict], list[dict]]:
    """(feedback.json records, sft.json records) in the QA-Feedback format; see the module docstring."""
    items = _by_id(store, project_id)
    labels = store.labels(project_id)
    ranks = {(r["item_id"], r["annotator"]): r["ranks"] for r in labels["rankings"]}
    fixes = {(c["item_id"], c["annotator"]): c for c in labels["corrections"]}
    feedback, sft = [], {}
    for review in labels["spans"]:
        it = items[review["item_id"]]
        k = len(it["responses"])
        first = review["response_idx"]
        order = [first] + [i for i in range(k) if i != first]
        question = it["meta"].get("question") or it["prompt"]
        fix = fixes.get((it["id"], review["annotator"]))
        rec = {"question": question, "passages": it["meta"].get("passages", []),
               **{f"prediction {n + 1}": it["responses"][i] for n, i in enumerate(order)},
               "feedback": {
                   "errors": [{"error type": s["error_type"], "start": s["start"], "end": s["end"], "explanation": s["note"],
                               "text": it["responses"][first][s["start"]:s["end"]]}
                              for s in review["spans"] if s["category"] in ("C1", "C2")],
                   "missing-info": [],
                   "corrected-prediction": fix["text"] if fix and fix["response_idx"] in (None, first) else "",
               },
               "preference": _pair_judgements(ranks.get((it["id"], review["annotator"])), order),
               "studio-missing-info": [{"start": s["start"], "end": s["end"], "note": s["note"]}
                                       for s in review["spans"] if s["category"] == "C3"],
               "item_id": it["id"], "annotator": review["annotator"], "response_idx": first}
        feedback.append(rec)
        sft.setdefault(question, {"question": question, "text": it["prompt"], "passages": rec["passages"]})
    return feedback, list(sft.values())


def sft_records(store: FeedbackStore, project_id: int) -> list[dict]:
    """The corrections as TRL prompt-completion records ``{prompt, completion}`` (+ item_id, annotator)."""
    items = _by_id(store, project_id)
    return [{"prompt": items[c["item_id"]]["prompt"], "completion": c["text"], "item_id": c["item_id"],
             "annotator": c["annotator"]} for c in store.labels(project_id)["corrections"]]


def dataset_rows(store: FeedbackStore, project_id: int) -> list[dict]:
    """One row per (item, annotator) who labelled it, with every label (the ``to_dataset`` rows)."""
    items = _by_id(store, project_id)
    labels = store.labels(project_id)
    rows: dict[tuple, dict] = {}

    def row(item_id, annotator):
        it = items[item_id]
        return rows.setdefault((it["position"], annotator), {
            "item_id": item_id, "position": it["position"], "prompt": it["prompt"], "responses": it["responses"],
            "annotator": annotator, "ranks": None, "ratings": [], "spans": [], "correction": None, "skipped": False})

    for r in labels["rankings"]:
        row(r["item_id"], r["annotator"])["ranks"] = r["ranks"]
    for r in labels["ratings"]:
        row(r["item_id"], r["annotator"])["ratings"].append(
            {"response_idx": r["response_idx"], "score": r["score"], "notes": r["notes"], **r["flags"]})
    for r in labels["spans"]:
        target = row(r["item_id"], r["annotator"])["spans"]
        target += [{"response_idx": r["response_idx"], "start": s["start"], "end": s["end"], "category": s["category"],
                    "error_type": s["error_type"], "note": s["note"]} for s in r["spans"]]
    for r in labels["corrections"]:
        row(r["item_id"], r["annotator"])["correction"] = r["text"]
    for r in labels["skips"]:
        row(r["item_id"], r["annotator"])["skipped"] = True
    return [rows[k] for k in sorted(rows)]


def dataset_features():
    """The explicit ``datasets.Features`` of ``to_dataset`` (so empty projects and parquet keep one schema)."""
    from datasets import Features, Sequence, Value  # here, not at the top: `datasets` is heavy


    rating = {"response_idx": Value("int32"), "score": Value("int32"), "notes": Value("string"),
              **{f: Value("bool") for f in FLAG_NAMES}}
    span = {"response_idx": Value("int32"), "start": Value("int32"), "end": Value("int32"), "category": Value("string"),
            "error_type": Value("string"), "note": Value("string")}
    return Features({"item_id": Value("int64"), "position": Value("int32"), "prompt": Value("string"),
                     "responses": Sequence(Value("string")), "annotator": Value("string"), "ranks": Sequence(Value("int32")),
                     "ratings": [rating], "spans": [span], "correction": Value("string"), "skipped": Value("bool")})


def to_dataset(store: FeedbackStore, project_id: int):
    """The project's labels as a ``datasets.Dataset`` (one row per item and annotator)."""
    from datasets import Dataset

    features = dataset_features()
    rows = dataset_rows(store, project_id)
    return Dataset.from_dict({name: [r[name] for r in rows] for name in features}, features=features)


def write_jsonl(records: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_qa_feedback(store: FeedbackStore, project_id: int, folder) -> Path:
    """``folder/feedback.json`` + ``folder/sft.json``; pass the folder to ``load_qa_feedback_spans`` or
    ``python -m core.trainers.finegrained --data FOLDER``. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    feedback, sft = qa_feedback_records(store, project_id)
    (folder / "feedback.json").write_text(json.dumps(feedback, ensure_ascii=False, indent=1))
    (folder / "sft.json").write_text(json.dumps(sft, ensure_ascii=False, indent=1))
    return folder


def export_project(store: FeedbackStore, project_id: int, folder, agreement: dict | None = None) -> dict[str, Path]:
    """Every export of a project into ``folder``; returns name -> path.

    preferences.jsonl (all pairs), preferences_best_vs_rest.jsonl, rankings.jsonl, sft.jsonl,
    qa_feedback/ (feedback.json, sft.json), dataset/ (save_to_disk), dataset.parquet, and
    agreement.json (``core.feedback.agreement.project_agreement`` unless ``agreement`` is given).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "preferences": write_jsonl(preference_pairs(store, project_id, "all"), folder / "preferences.jsonl"),
        "preferences_best_vs_rest": write_jsonl(preference_pairs(store, project_id, "best_vs_rest"),
                                                folder / "preferences_best_vs_rest.jsonl"),
        "rankings": write_jsonl(ranking_records(store, project_id), folder / "rankings.jsonl"),
        "sft": write_jsonl(sft_records(store, project_id), folder / "sft.jsonl"),
        "qa_feedback": write_qa_feedback(store, project_id, folder / "qa_feedback"),
    }
    ds = to_dataset(store, project_id)
    ds.save_to_disk(str(folder / "dataset"))
    ds.to_parquet(str(folder / "dataset.parquet"))
    out["dataset"], out["parquet"] = folder / "dataset", folder / "dataset.parquet"
    agreement = project_agreement(store, project_id) if agreement is None else agreement
    (folder / "agreement.json").write_text(json.dumps(agreement, indent=1, default=str))
    out["agreement"] = folder / "agreement.json"
    return out


# ----------------------------------------------------------------------------- imports


def ranks_from_judgements(judgements: list[int], k: int) -> list[int] | None:
    """A ranking with ties from QA-Feedback pairwise judgements (1v2, 1v3, ...; 1 first wins, 2 second, 0 tie):
    responses ordered by wins (a tie counts half), equal wins share a rank (dense). None if all are equal.
    Intransitive judgements (a > b > c > a) become ties, which is the honest reading of them."""
    wins = [0.0] * k
    for (a, b), p in zip(itertools.combinations(range(k), 2), judgements):
        if p == 1:
            wins[a] += 1
        elif p == 2:
            wins[b] += 1
        else:
            wins[a] += 0.5
            wins[b] += 0.5
    levels = sorted(set(wins), reverse=True)
    if len(levels) == 1:
        return None
    return [levels.index(w) + 1 for w in wins]


def import_qa_feedback(store: FeedbackStore, name: str, path=None, limit: int | None = None,
                       annotator: str = "qa-feedback") -> tuple[int, dict]:
    """A project of QA-Feedback questions with their four answers, pre-labelled by ``annotator``:
    the spans and correction of answer 1, a ranking from the six judgements. Returns (project id, counts)."""
    folder = Path(path) if path else shared_data_dir() / "qa_feedback"
    fb_path = folder / "feedback.json" if folder.is_dir() else folder
    spans = data.load_qa_feedback_spans(folder)  # checks every record and span
    try:
        raw = json.loads(fb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeedbackError(f"cannot read QA-Feedback records from {fb_path}: {exc}") from None
    items, skipped = [], {"empty_answer": 0}
    for r, s in zip(raw, spans):
        answers = [r.get(f"prediction {n}") for n in range(1, 5)]
        if any(not isinstance(a, str) or not a.strip() for a in answers):
            skipped["empty_answer"] += 1
            continue
        items.append({"prompt": s["prompt"], "responses": answers,
                      "meta": {"question": r["question"], "passages": r["passages"], "question_id": s["question_id"]},
                      "_spans": s["spans"], "_fix": s["corrected"], "_pref": r.get("preference")})
        if limit and len(items) >= limit:
            break
    pid = store.create_project(name, policy="qa-feedback (imported)", k=4, seed=0, source=str(fb_path),
                               items=[{k: v for k, v in it.items() if not k.startswith("_")} for it in items],
                               settings={"imported": "qa-feedback"})
    counts = {"items": len(items), "rankings": 0, "span_reviews": 0, "corrections": 0, "skipped": skipped}
    for it, stored in zip(items, store.items(pid)):
        sid = f"import:{pid}:{stored['id']}"
        store.submit_spans(f"{sid}:spans", annotator, stored["id"], 0,
                           [{"start": x["start"], "end": x["end"], "category": x["category"], "error_type": x["error_type"],
                             "note": x["explanation"]} for x in it["_spans"]])
        counts["span_reviews"] += 1
        if it["_fix"] and it["_fix"].strip():
            store.submit_correction(f"{sid}:correction", annotator, stored["id"], it["_fix"], response_idx=0)
            counts["corrections"] += 1
        ranks = ranks_from_judgements(it["_pref"], 4) if isinstance(it["_pref"], list) and len(it["_pref"]) == 6 else None
        if ranks:
            store.submit_ranking(f"{sid}:ranking", annotator, stored["id"], check_ranks(ranks, 4))
            counts["rankings"] += 1
    return pid, counts


def import_hh_rlhf(store: FeedbackStore, name: str, path=None, limit: int = 200, seed: int = 0,
                   annotator: str = "hh-rlhf") -> tuple[int, dict]:
    """A K = 2 project of HH-RLHF pairs (response order shuffled by ``seed``), ranked chosen > rejected
    by ``annotator``. Returns (project id, counts)."""
    records = data.load_hh_rlhf(path, limit=limit)
    rng = random.Random(seed)
    items, chosen_at = [], []
    for r in records:
        first = rng.random() < 0.5  # so the chosen answer is not always shown first
        items.append({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]] if first else [r["rejected"], r["chosen"]],
                      "meta": {"hh_index": r.get("index")}})
        chosen_at.append(0 if first else 1)
    if not items:
        raise FeedbackError("no usable HH-RLHF pairs to import")
    pid = store.create_project(name, policy="hh-rlhf (imported)", k=2, seed=seed, source=str(path or "hh-rlhf"),
                               items=items, settings={"imported": "hh-rlhf"})
    for stored, c in zip(store.items(pid), chosen_at):
        store.submit_ranking(f"import:{pid}:{stored['id']}:ranking", annotator, stored["id"], [1, 2] if c == 0 else [2, 1])
    return pid, {"items": len(items), "rankings": len(items), "skipped": dict(getattr(records, "skipped", {}))}
