"""The semantic cache's rules as pure functions: what is embedded, what must match exactly, how close is close.

No I/O here (numpy only computes): the embedding comes from a backend (``embeddings.py``) and the entries
from the database (``semantic_cache.py``); these functions decide. Tested from JSON cases (tests/completions/cases/).
"""

from __future__ import annotations

import math
import operator
import re
import struct
import unicodedata
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from registry.completions.payload import turn_text
from registry.lib.hashing import content_sha256

T = TypeVar("T")

# The threshold a prompt gets when it enables the semantic cache without one. Chosen from the labelled pairs
# of tests/completions/data/semantic_cache_pairs.json with all-MiniLM-L6-v2 (bench/semantic_cache.py, "Semantic
# cache" in BENCHMARKS.md): the lowest threshold on a 0.01 grid whose wrong-hit rate is at most 1%, in each of
# the bench's two prompts (the higher of the two).
DEFAULT_THRESHOLD = 0.93
MAX_WRONG_HIT_RATE = 0.01

# Fields of the upstream request that are its text (embedded) or do not change the answer.
_TEXT_FIELDS = ("messages", "prompt")
_IGNORED_FIELDS = ("user", "stream", "stream_options")
_SPACE = re.compile(r"\s+")
_FLOAT32 = np.dtype("<f4")  # how ``pack`` writes a vector


def normalise(text: str) -> str:
    """Unicode compatibility forms and runs of whitespace folded: spacing never tells two requests apart."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def request_text(payload: Mapping[str, Any]) -> str:
    """The text of a rendered upstream request, as embedded: each chat turn as ``role: content``, a named
    participant's as ``role (name): content`` (the model reads the name with its message)."""
    messages = payload.get("messages")
    if messages is not None:
        return normalise("\n".join(turn_text(m.get("role", ""), m.get("content", ""), m.get("name")) for m in messages))
    return normalise(str(payload.get("prompt", "")))


def exact_values(variables: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The values of the variables that must match exactly (a missing one counts as null)."""
    return {name: variables.get(name) for name in sorted(names)}


def scope_key(
    *,
    prompt: str,
    version: int,
    config: str,
    config_version: int,
    model: str,
    exact: Mapping[str, Any],
    payload: Mapping[str, Any],
) -> str:
    """Where a request's candidates live: everything that must be equal for an answer to be reused.

    The prompt version and config version (a new version never sees an older one's answers), the embedding
    model (vectors of two models are not comparable), the exact variables' values, and every request field
    but the text and the end user (model, sampling, ``max_tokens``, ``seed``). The participants' names of a
    request that names any (the OpenAI door's ``name``) must be equal too: a model that addresses its user by
    name answers Ada and Grace differently however alike their messages are. A request naming none keeps the
    scope it had before names were passed on.
    """
    request = {k: v for k, v in payload.items() if k not in _TEXT_FIELDS and k not in _IGNORED_FIELDS}
    names = [m.get("name") for m in payload.get("messages") or ()]
    return content_sha256(
        {
            "prompt": [prompt, version],
            "config": [config, config_version],
            "embedding_model": model,
            "exact": dict(exact),
            "request": request,
            **({"names": names} if any(name is not None for name in names) else {}),
        }
    )


def pack(vector: Sequence[float]) -> bytes:
    """A vector scaled to unit length, as little-endian float32 (1.5 KB for 384 dimensions)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not vector or norm == 0 or not math.isfinite(norm):
        raise ValueError("an embedding must be a non-empty vector of finite numbers, not all zero")
    return struct.pack(f"<{len(vector)}f", *(x / norm for x in vector))


def unpack(raw: bytes) -> array[float]:
    values = array("f")
    values.frombytes(raw)
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - big-endian machines
        values.byteswap()
    return values


def similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two unit vectors (their dot product); vectors of different lengths are unrelated."""
    if len(a) != len(b):
        return 0.0
    return math.fsum(map(operator.mul, a, b))


def best_match(query: bytes, candidates: Sequence[tuple[T, bytes]], threshold: float) -> tuple[T, float] | None:
    """The most similar candidate at or above ``threshold``; the first one wins a tie (pass the newest first).

    Vectors as ``pack`` writes them; one of another length is unrelated. The candidates' bytes are read as one
    float32 matrix and scored by one matrix-vector product (in float64, as ``similarity`` sums): 200 vectors of
    384 dimensions in about 0.1 ms instead of 4 ms in Python (BENCHMARKS.md, "Semantic cache").
    """
    same = [(item, raw) for item, raw in candidates if len(raw) == len(query)]
    if not same or not query:
        return None
    matrix = np.frombuffer(b"".join(raw for _, raw in same), dtype=_FLOAT32).reshape(len(same), -1)
    scores = matrix.astype(np.float64) @ np.frombuffer(query, dtype=_FLOAT32).astype(np.float64)
    best = int(np.argmax(scores))  # the first of equal maxima
    score = float(scores[best])
    return (same[best][0], score) if score >= threshold else None


def rates(positives: Sequence[float], negatives: Sequence[float], threshold: float) -> tuple[float, float]:
    """Hit rate over paraphrase pairs and wrong-hit rate over unrelated pairs, at ``threshold``."""
    hit = sum(s >= threshold for s in positives) / len(positives) if positives else 0.0
    wrong = sum(s >= threshold for s in negatives) / len(negatives) if negatives else 0.0
    return hit, wrong


def choose_threshold(
    positives: Sequence[float], negatives: Sequence[float], *, max_wrong_hit_rate: float, step: float = 0.01
) -> float:
    """The lowest threshold on a grid of ``step`` (the most hits) whose wrong-hit rate is at most the target."""
    steps = round(1 / step)
    for i in range(1, steps + 1):
        threshold = round(i * step, 6)
        if rates(positives, negatives, threshold)[1] <= max_wrong_hit_rate:
            return threshold
    return 1.0
