"""Text normalisation, word shingles, MinHash signatures and an LSH index over them (datasketch).

Shared by the near-duplicate-negative filter (`transforms/near_duplicates.py`), the evaluation
leakage guard (`transforms/leakage.py`) and the benchmark, so "near duplicate" means one thing
everywhere. No Beam here: signatures are plain `uint64` arrays, cheap to ship between stages.

A signature is computed once per text (`signature`); two signatures estimate the Jaccard
similarity of the texts' shingle sets (`jaccard`: the share of equal slots, standard error about
sqrt(J(1-J)/NUM_PERM), 0.044 at J = 0.5). `LshIndex` finds, without comparing all pairs, the
indexed signatures whose estimated Jaccard reaches a threshold: banded LSH in datasketch's band
layout for the threshold (tuned to miss few: false negatives weigh 9x false positives) proposes
candidates and each is verified on its full signature, so what comes back is exactly "estimated
J >= threshold". Signatures are datasketch `MinHash` values (its permutations and hash scheme).
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
import zlib
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

NUM_PERM = 128  # slots per signature: 1 KiB per text
MINHASH_SEED = 1  # fixed: signatures are comparable across runs, workers and corpora
QUERY_SHINGLE = 1  # word unigrams for short texts (queries): one edited word of ten keeps J near 0.8,
#                    where bigrams would fall to 0.6
DOC_SHINGLE = 2  # word bigrams for documents: rewording 15% of the words keeps J near 0.6, unrelated
#                  SciFact abstracts (even BM25 neighbours) stay below 0.1
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights of the band layout: recall first
SCHEME = "affine32"  # datasketch >= 2 hash scheme; fixed, so stored signatures stay comparable

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: Optional[str]) -> str:
    """Case-folded, NFKC-normalised words joined by single spaces: punctuation, accents written as
    compatibility characters, case and spacing do not make two texts differ."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text or "").casefold()))


def shingles(text: Optional[str], k: int) -> Set[str]:
    """The word k-grams of the normalised text; a text shorter than k words is one shingle."""
    words = normalise(text).split()
    if len(words) <= k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def exact_jaccard(a: Set[str], b: Set[str]) -> float:
    """Jaccard similarity of two shingle sets (for tests and measurements; the pipelines estimate it)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _hash32(shingle: bytes) -> int:
    return zlib.crc32(shingle)  # deterministic and fast; the permutations on top make it min-wise


@functools.lru_cache(maxsize=None)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def signature(text: Optional[str], k: int, num_perm: int = NUM_PERM) -> np.ndarray:
    """The MinHash signature (`num_perm` uint64 slots) of the text's word k-shingles. An empty text
    has the all-max signature, which matches only other empty texts."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, hashfunc=_hash32,
                permutations=_permutations(num_perm, MINHASH_SEED), scheme=SCHEME)
    m.update_batch([s.encode("utf-8") for s in sorted(shingles(text, k))])
    return m.hashvalues.copy()


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the texts behind two signatures."""
    return float(np.count_nonzero(a == b)) / len(a)


@functools.lru_cache(maxsize=None)
def band_layout(threshold: float, num_perm: int = NUM_PERM) -> Tuple[int, int]:
    """(bands, rows per band) that datasketch's `MinHashLSH` chooses for the threshold and weights."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


_BAND_MIX = np.random.default_rng(20240917).integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) | np.uint64(1)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's `rows` slots and the band's number mixed into one key, so
    equal bands give equal keys and keys of different bands (almost surely) differ."""
    sigs = np.atleast_2d(sigs)[:, :bands * rows].astype(np.uint64)
    mixed = (sigs * _BAND_MIX[:bands * rows]).reshape(len(sigs), bands, rows).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64
    return mixed * np.uint64(0x9E3779B97F4A7C15) + np.arange(bands, dtype=np.uint64)


class LshIndex:
    """Signatures under keys, queried for the keys whose estimated Jaccard with a signature is at
    least `threshold`, without comparing all pairs: banded LSH with datasketch's band layout for the
    threshold (`band_layout`), all band keys in one sorted array searched by bisection, and every
    candidate verified on its full signature. Stored (`save`/`load`, .npz, no pickle) as keys and
    one signature matrix; the band arrays are rebuilt on load in milliseconds. (datasketch's own
    `MinHashLSH` could only be pickled, and its object graph takes about a second to load per
    thousand documents.)"""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"a Jaccard threshold is in (0, 1], got {threshold}")
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = band_layout(threshold, num_perm)
        self.keys: List[Hashable] = []
        self._row: Dict[Hashable, int] = {}
        self._pending: List[np.ndarray] = []
        self._matrix = np.zeros((0, num_perm), dtype=np.uint32)
        self._order = self._sorted = None  # band keys, sorted, and the row each came from

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Hashable, sig: np.ndarray) -> None:
        if key in self._row:
            return
        self._row[key] = len(self.keys)
        self.keys.append(key)
        self._pending.append(np.asarray(sig, dtype=np.uint32))
        self._order = None

    def _build(self) -> None:
        if self._pending:
            self._matrix = np.vstack([self._matrix, np.stack(self._pending)])
            self._pending = []
        keys = band_keys(self._matrix, self.bands, self.rows).reshape(-1)
        order = np.argsort(keys, kind="stable")
        self._sorted, self._order = keys[order], order // self.bands

    def signature(self, key: Hashable) -> Optional[np.ndarray]:
        row = self._row.get(key)
        if row is None:
            return None
        if self._order is None:
            self._build()
        return self._matrix[row]

    def query(self, sig: np.ndarray) -> List[Tuple[Hashable, float]]:
        """(key, estimated Jaccard) of every indexed signature at or above the threshold, best first
        (ties by key, so the order is the same on every run)."""
        if not self.keys:
            return []
        if self._order is None:
            self._build()
        q = band_keys(sig, self.bands, self.rows)[0]
        lo, hi = np.searchsorted(self._sorted, q, "left"), np.searchsorted(self._sorted, q, "right")
        hit = np.flatnonzero(hi > lo)
        if not len(hit):
            return []
        rows = np.unique(np.concatenate([self._order[lo[i]:hi[i]] for i in hit]))
        estimates = np.count_nonzero(self._matrix[rows] == np.asarray(sig, dtype=np.uint32), axis=1) / self.num_perm
        hits = [(self.keys[r], float(j)) for r, j in zip(rows.tolist(), estimates.tolist()) if j >= self.threshold]
        return sorted(hits, key=lambda kj: (-kj[1], str(kj[0])))

    def save(self, f: Any) -> None:
        """Write keys (as strings) and signatures to an open binary file (.npz, no pickles)."""
        if self._pending:
            self._build()
        np.savez(f, keys=np.array([str(k) for k in self.keys], dtype=str), matrix=self._matrix,
                 threshold=np.float64(self.threshold), num_perm=np.int64(self.num_perm))

    @classmethod
    def load(cls, data: bytes) -> "LshIndex":
        """The index `save` wrote (keys come back as strings)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            index = cls(float(z["threshold"]), int(z["num_perm"]))
            index.keys = z["keys"].tolist()
            index._matrix = z["matrix"]
        index._row = {k: i for i, k in enumerate(index.keys)}
        return index

    def __getstate__(self) -> Dict[str, Any]:
        if self._pending:
            self._build()
        return {"threshold": self.threshold, "num_perm": self.num_perm, "keys": self.keys, "matrix": self._matrix}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["threshold"], state["num_perm"])
        self.keys = list(state["keys"])
        self._row = {k: i for i, k in enumerate(self.keys)}
        self._matrix = state["matrix"]


def build_index(items: Iterable[Tuple[Hashable, np.ndarray]], threshold: float) -> LshIndex:
    index = LshIndex(threshold)
    for key, sig in items:
        index.add(key, sig)
    return index


def signatures(texts: Sequence[str], k: int) -> List[np.ndarray]:
    return [signature(t, k) for t in texts]
