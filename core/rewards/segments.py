"""Sentences and sub-sentences of a response, as exact character spans into it.

What it is: the segmentation behind fine-grained rewards (Wu et al. 2023, "Fine-Grained
Human Feedback Gives Better Rewards for Language Model Training", sec. 2.2 and
Appendix D): the factuality reward (C2) is given per sentence, the relevance reward
(C1) per sub-sentence, each on the token where its segment ends (eq. 1).

Sentences come from ``pysbd`` (Golden Rules segmenter, no download) with
``char_span=True``. Upstream uses spaCy's ``en_core_web_sm`` parser instead; we
use pysbd to avoid a model download, so sentence boundaries can differ on hard cases.

Sub-sentences follow allenai/FineGrainedRLHF exactly
(``fgrl/reward_utils.py::split_text_to_subsentences``, same rule in
``tasks/qa_feedback/reward_modeling/create_rel_fact_rm_files.py::get_subsentence_starts``,
``MIN_SUBSENT_WORDS = 5``): inside one sentence, split into whitespace-separated
words w_0..w_{n-1}; word i (i >= 1) may start a sub-sentence when word i-1 ends with
one of ``, ; ! ?`` (regex ``[,;!?]`` on its last character) and ``i + 5 < n``
(the rest is not too short). If the piece since the previous start has fewer than 5
words, then: if that previous start is not the sentence's first word, the previous
start is *moved* to i (the short piece joins the sub-sentence before it); otherwise
(the sentence opens with a short piece) i does not start a sub-sentence.

Whitespace: every span covers non-whitespace content only. A span starts at its first
non-space character and ends after its last non-space character, so
``text[start:end] == text[start:end].strip()``; whitespace between segments belongs to
no segment (upstream's ``sent.end_char`` from spaCy also excludes trailing spaces).
A text that is empty or only whitespace has no segments.

What it leaves out: languages other than English, paragraph-level segmentation.

    from core.rewards.segments import sentence_spans, subsentence_spans
    sentence_spans("It rained. We stayed in")        # [(0, 10), (11, 23)]
"""

from __future__ import annotations

import re
from functools import lru_cache

import pysbd

MIN_SUBSENT_WORDS = 5
"""Minimum words in a sub-sentence (FineGrainedRLHF ``MIN_SUBSENT_WORDS``)."""
_SUBSENT_END = re.compile(r"[,;!?]")
_WORD = re.compile(r"\S+")

Span = tuple[int, int]


@lru_cache(maxsize=1)
def _segmenter():
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def _trim(text: str, start: int, end: int) -> Span | None:
    """Shrink [start, end) to its non-whitespace content; None if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def sentence_spans(text: str) -> list[Span]:
    """Sentences of ``text`` as (start, end) character spans, in order, non-overlapping.

    Spans exclude surrounding whitespace. pysbd's ``char_span`` output is re-checked:
    a span that does not match its sentence text or overlaps the previous one is
    dropped, and text left uncovered joins the sentence after it (or, at the end, the
    last one becomes a sentence of its own), so the spans always tile the content.
    """
    if not text or text.isspace():
        return []
    bounds: list[int] = []  # sentence end offsets in text (exclusive), from pysbd
    pos = 0
    for piece in _segmenter().segment(text):
        start, end = piece.start, piece.end
        if text[start:end] != piece.sent or end <= pos:
            continue  # pysbd's regex re-matching can misplace repeated sentences
        bounds.append(end)
        pos = end
    if not bounds or bounds[-1] < len(text):
        bounds.append(len(text))  # anything pysbd dropped at the end
    spans, start = [], 0
    for end in bounds:
        span = _trim(text, start, end)
        if span is not None:
            spans.append(span)
        start = end
    return spans


def _subsentence_starts(n_words: int, word_ends_clause: list[bool], min_words: int = MIN_SUBSENT_WORDS) -> list[bool]:
    """FineGrainedRLHF ``get_sub_sentence_starts`` on precomputed word flags.

    word_ends_clause[i]: word i ends with , ; ! or ?. Returns is_start per word.
    """
    is_start = [True]
    prev_start = 0
    for i in range(1, n_words):
        if word_ends_clause[i - 1] and i + min_words < n_words:
            if i - prev_start < min_words:
                if prev_start > 0:
                    is_start.append(True)
                    is_start[prev_start] = False  # the short piece joins the previous sub-sentence
                    prev_start = i
                else:
                    is_start.append(False)
            else:
                is_start.append(True)
                prev_start = i
        else:
            is_start.append(False)
    return is_start


def split_sentence(text: str, start: int, end: int, min_words: int = MIN_SUBSENT_WORDS) -> list[Span]:
    """Sub-sentences of the sentence ``text[start:end]`` (see the module docstring for the rule)."""
    words = [m.span() for m in _WORD.finditer(text, start, end)]  # absolute offsets
    if not words:
        return []
    flags = [_SUBSENT_END.match(text[e - 1]) is not None for _, e in words]
    is_start = _subsentence_starts(len(words), flags, min_words)
    firsts = [i for i, s in enumerate(is_start) if s]
    lasts = [i - 1 for i in firsts[1:]] + [len(words) - 1]
    return [(words[a][0], words[b][1]) for a, b in zip(firsts, lasts)]


def subsentence_spans(text: str, min_words: int = MIN_SUBSENT_WORDS) -> list[Span]:
    """Sub-sentences of every sentence of ``text``, as (start, end) spans, in order."""
    return [sub for s, e in sentence_spans(text) for sub in split_sentence(text, s, e, min_words)]


def segment_spans(text: str, level: str, token_spans: list[Span] | None = None) -> list[Span]:
    """Spans of ``text`` at a reward level.

    level: "sequence" -> [(0, len(text))] (even for an empty text: a sequence-level
    score always exists); "sentence"; "subsentence"; "token" -> ``token_spans`` (the
    policy tokens' char spans, required for this level).
    """
    if level == "sequence":
        return [(0, len(text))]
    if level == "sentence":
        return sentence_spans(text)
    if level == "subsentence":
        return subsentence_spans(text)
    if level == "token":
        if token_spans is None:
            raise ValueError("level 'token' needs the policy's token_spans")
        return list(token_spans)
    raise ValueError(f"unknown reward level {level!r}; expected 'sequence', 'sentence', 'subsentence' or 'token'")
