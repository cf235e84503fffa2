"""MiniLM sentence embeddings cached on disk, keyed by the text's content hash.

What it is: ``embed_cached(texts, cache_file)`` returns all-MiniLM-L6-v2 embeddings
(``core.rewards.toxicity.MiniLMEmbedder``: mean pooling, L2 norm, (N, 384)) and keeps
every embedding it computed in ``cache_file`` (a torch file mapping sha256(max_length,
text) -> vector), so rebuilding the shipped reward heads (``core.trainers.build_shipped``)
embeds each text once per machine. The cache lives outside the repository.

What it leaves out: eviction (the file only grows; delete it to start afresh).

    from core.rewards.embedcache import embed_cached
    x = embed_cached(["a sentence", "another"], Path("/tmp/emb.pt"))   # (2, 384)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_EMBEDDERS: dict[int, object] = {}


def text_key(text: str, max_length: int) -> str:
    return hashlib.sha256(f"{max_length}\0{text}".encode()).hexdigest()[:32]


def embedder(max_length: int = 256):
    """One shared ``MiniLMEmbedder`` per max_length (loading costs seconds)."""
    if max_length not in _EMBEDDERS:
        from core.rewards.toxicity import MiniLMEmbedder

        _EMBEDDERS[max_length] = MiniLMEmbedder(max_length=max_length)
    return _EMBEDDERS[max_length]


def embed_cached(texts: list[str], cache_file: Path | None = None, max_length: int = 256, progress: bool = False):
    """(N, 384) float32 embeddings of ``texts``; with cache_file, reuse and extend the on-disk cache."""
    import torch

    cache: dict[str, torch.Tensor] = {}
    if cache_file is not None and Path(cache_file).is_file():
        cache = torch.load(cache_file, weights_only=True)
    keys = [text_key(t, max_length) for t in texts]
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    if todo:
        vecs = embedder(max_length).embed([t for _, t in todo], batch_size=32, progress=progress)
        for (k, _), v in zip(todo, vecs):
            cache[k] = v.clone()
        if cache_file is not None:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(cache_file) + ".tmp")
            torch.save(cache, tmp)
            tmp.replace(cache_file)
    if not texts:
        return torch.zeros(0, 384)
    return torch.stack([cache[k] for k in keys]).float()


def token_count(texts: list[str], max_length: int = 256) -> list[int]:
    """MiniLM word-piece counts (with [CLS]/[SEP]) of each text, uncut: > max_length means it was truncated."""
    tok = embedder(max_length).tokenizer
    return [len(ids) for ids in tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]
