"""Near-duplicate negatives: a candidate whose text is a near copy of one of its query's positives.

A re-posted page, another version of an abstract or a boilerplate page sampled as a negative is the
worst false negative: the loss pushes the model away from the right answer. Rank windows and
cross-encoders do not catch all of them; a text-similarity check does, cheaply, and at corpus
scale without comparing all pairs:

    docs -> MinHash signature of each document's word bigrams, once, in an LSH index
            (`BuildMinHashShards`: sharded by the stable doc-id hash and cached under
            WORK_DIR/indices/minhash-*/ like the BM25 and FAISS shards, so a rerun on the same
            corpus only loads it)
         -> per query record: each positive's signature looked up in every shard's index (a few
            LSH probes per query): (query, near copies of its positives), a small side input
         -> every source's candidate lists lose those documents before sampling

so a near copy is never used as a negative of that query, from any source, and the sampler fills
the row from the other candidates. Each worker that probes holds every shard's index (512 bytes of
signature and about 300 bytes of band keys a document). With `cosine` (and dense vectors in the
run) a document whose bi-encoder vector has cosine >= `cosine` with a positive's is a near
duplicate too (flat dot products of every document vector against the positives' vectors, a side
input). Counted in `filter/near_duplicate_of_positive` (candidate entries removed; per source in
`..._<source>`) and `filter/near_duplicate_pairs` ((query's positive, near copy) pairs found). In pretext runs a pair's positive is a passage of its source document, and
the check compares candidates with that document. Candidates that travel inside the records
(pretext `same_doc` passages) are passages of the positive's own document by design and are not
checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer import minhash
from tripleminer.index.shards import shard_of
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms import retrieval
from tripleminer.transforms.common import timed

NAMESPACE = "filter"
REASON = "near_duplicate_of_positive"


@dataclass(frozen=True)
class NearDuplicateSettings:
    """When a candidate counts as a near copy of a positive; both None: no check (the default)."""

    jaccard: Optional[float] = None  # estimated Jaccard of word bigrams (MinHash), e.g. 0.4
    cosine: Optional[float] = None  # cosine of the bi-encoder's document vectors, e.g. 0.98

    def __post_init__(self) -> None:
        if self.jaccard is not None and not 0.0 < self.jaccard <= 1.0:
            raise ValueError(f"--dup_jaccard must be in (0, 1], got {self.jaccard}")
        if self.cosine is not None and not -1.0 < self.cosine <= 1.0:
            raise ValueError(f"--dup_cosine must be in (-1, 1], got {self.cosine}")

    @property
    def active(self) -> bool:
        return self.jaccard is not None or self.cosine is not None


def doc_signature(doc: Dict[str, Any]) -> np.ndarray:
    """The MinHash signature of a document's title and text (word bigrams)."""
    return minhash.signature(passage_text(doc), minhash.DOC_SHINGLE)


class CachedSide:
    """A structure built once per worker from a side input (rebuilt only when the side input changes)."""

    def __init__(self) -> None:
        self._source: Optional[int] = None
        self.value: Any = None

    def load(self, side: Any, build) -> Any:
        if self._source != id(side):
            self.value, self._source = build(side), id(side)
        return self.value


# --- the MinHash LSH index of the corpus: built, sharded and cached like the BM25 and FAISS shards ---

INDEX_FILE = "minhash_lsh.npz"  # written last: marks a finished shard


def _index_key(threshold: float) -> str:
    return f"k{minhash.DOC_SHINGLE}-p{minhash.NUM_PERM}-{minhash.SCHEME}-s{minhash.MINHASH_SEED}-j{threshold:g}"


def _write_index(local: str, items: List[Tuple[str, str]], threshold: float) -> None:
    with timed("minhash"):
        index = minhash.build_index(((doc_id, minhash.signature(text, minhash.DOC_SHINGLE)) for doc_id, text in items), threshold)
    with open(os.path.join(local, INDEX_FILE), "wb") as f:
        index.save(f)


def build_minhash_shard(element: Tuple[int, List[Tuple[str, str]]], threshold: float, work_dir: str) -> Tuple[int, str]:
    """One shard's LSH index over its documents' signatures, under WORK_DIR/indices/minhash-*/ (reused
    when the shard's ids and texts are unchanged)."""
    shard, items = element
    content = hashlib.blake2b(digest_size=10)
    for doc_id, text in items:
        content.update(doc_id.encode() + b"\x1f" + text.encode() + b"\x1e")
    return shard, retrieval.publish_shard("minhash", work_dir, _index_key(threshold), shard, content,
                                          lambda local: _write_index(local, items, threshold), marker=INDEX_FILE)


class BuildMinHashShards(beam.PTransform):
    """Corpus -> (shard, index dir) for each of S shards (by the stable doc-id hash of the other indices)."""

    def __init__(self, threshold: float, num_shards: int, work_dir: str) -> None:
        super().__init__()
        self.threshold, self.num_shards, self.work_dir = threshold, num_shards, work_dir

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return (
            docs
            | "DocTexts" >> beam.Map(lambda d: (d["doc_id"], passage_text(d)))
            | "Shards" >> retrieval.AssignShards(self.num_shards)
            | "BuildShard" >> beam.Map(build_minhash_shard, self.threshold, self.work_dir)
        )


def _load_shards(shards: List[Tuple[int, str]]) -> Dict[int, minhash.LshIndex]:
    out = {}
    for shard, path in sorted(shards):
        with FileSystems.open(FileSystems.join(path, INDEX_FILE)) as f:
            out[shard] = minhash.LshIndex.load(f.read())
    return out


def _near_pairs(doc_id: str, found: Iterable[Tuple[str, float]], queries_of: Dict[str, Sequence[str]], measure: str,
                counter: Any) -> Iterator[Tuple[str, Tuple[str, str, str, float]]]:
    """(query, (doc, positive, measure, value)) for each query of each positive the document nearly
    copies, unless the document is a positive of that query too (excluded from its negatives anyway)."""
    own = set(queries_of.get(doc_id, ()))
    for pos_id, value in found:
        if pos_id == doc_id:
            continue
        counter.inc()
        for qid in queries_of[pos_id]:
            if qid not in own:
                yield qid, (doc_id, pos_id, measure, round(value, 4))


class _JaccardNearCopies(beam.DoFn):
    """A query record -> (query, {doc: {"positive", "jaccard"}}) of the documents that nearly copy one
    of its positives: each positive's signature (from its shard) looked up in every shard's index."""

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self.indices = CachedSide()
        self.pairs = Metrics.counter(NAMESPACE, "near_duplicate_pairs")

    def process(self, record: Dict[str, Any], shards: List[Tuple[int, str]]) -> Iterator[Tuple[str, Dict[str, Dict[str, Any]]]]:
        with timed("near_duplicates"):
            indices = self.indices.load(shards, _load_shards)
            positives = {p["doc_id"] for p in record["positives"]}
            near: Dict[str, Dict[str, Any]] = {}
            for pos_id in sorted(positives):
                home = indices.get(shard_of(pos_id, self.num_shards))
                sig = home.signature(pos_id) if home is not None else None
                if sig is None:
                    continue
                for index in indices.values():
                    for doc_id, j in index.query(sig):
                        if doc_id not in positives:
                            self.pairs.inc()
                            near.setdefault(doc_id, {"positive": pos_id, "jaccard": round(j, 4)})
        if near:
            yield record["query_id"], near


class _CosineNearPositives(beam.DoFn):
    """(doc_id, unit vector) -> (query, (doc_id, positive, "cosine", c)) for the queries of each positive
    whose vector has cosine >= threshold with it (flat dot products against the positives' vectors)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.matrix = CachedSide()
        self.pairs = Metrics.counter(NAMESPACE, "near_duplicate_pairs_cosine")

    @staticmethod
    def _stack(positives: List[Tuple[str, Any, List[str]]]):
        ordered = sorted(positives, key=lambda t: t[0])
        matrix = np.stack([np.asarray(v, dtype=np.float32) for _, v, _ in ordered]) if ordered else np.zeros((0, 1), np.float32)
        return [k for k, _, _ in ordered], matrix, {k: qids for k, _, qids in ordered}

    def process(self, element: Tuple[str, Any], positives: List[Tuple[str, Any, List[str]]]) -> Iterator[Any]:
        doc_id, vector = element
        with timed("near_duplicates"):
            ids, matrix, queries_of = self.matrix.load(positives, self._stack)
            if not ids:
                return
            cosines = matrix @ np.asarray(vector, dtype=np.float32)
            found = [(ids[i], float(cosines[i])) for i in np.flatnonzero(cosines >= self.threshold)]
        yield from _near_pairs(doc_id, found, queries_of, "cosine", self.pairs)


def _with_queries(element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Tuple[str, Any, List[str]]]:
    doc_id, joined = element
    if joined["queries"] and joined["item"]:
        yield doc_id, joined["item"][0], sorted(set(joined["queries"]))


def _merge_near(element: Tuple[str, Iterable[Any]]) -> Tuple[str, Dict[str, Dict[str, Any]]]:
    """One query's near copies from both measures: doc id -> the positive it copies and the similarities."""
    qid, parts = element
    near: Dict[str, Dict[str, Any]] = {}
    for part in sorted(parts, key=lambda x: json.dumps(x, sort_keys=True)):
        if isinstance(part, dict):  # the Jaccard map of the query
            for doc_id, v in part.items():
                near.setdefault(doc_id, {"positive": v["positive"]}).update(jaccard=v["jaccard"])
        else:  # one cosine pair
            doc_id, pos_id, measure, value = part
            near.setdefault(doc_id, {"positive": pos_id})[measure] = value
    return qid, near


class NearDuplicatesOfPositives(beam.PTransform):
    """Query records -> (query_id, {doc_id: {"positive", "jaccard" and/or "cosine"}}): the documents
    that are near copies of one of the query's positives (queries without any are left out)."""

    def __init__(self, settings: NearDuplicateSettings, docs: beam.PCollection, work_dir: str, num_shards: int = 1,
                 doc_vectors: Optional[beam.PCollection] = None) -> None:
        super().__init__()
        if settings.cosine is not None and doc_vectors is None:
            raise ValueError("--dup_cosine compares the bi-encoder's document vectors: add ann to --negatives")
        self.settings, self.docs, self.work_dir, self.num_shards, self.doc_vectors = settings, docs, work_dir, num_shards, doc_vectors

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        parts: List[beam.PCollection] = []
        if self.settings.jaccard is not None:
            shards = self.docs | "BuildMinHashShards" >> BuildMinHashShards(self.settings.jaccard, self.num_shards, self.work_dir)
            parts.append(records | "JaccardNearCopies" >> beam.ParDo(_JaccardNearCopies(self.num_shards), beam.pvalue.AsList(shards)))
        if self.settings.cosine is None:
            return parts[0]
        positive_of = records | "PositiveOf" >> beam.FlatMap(lambda r: [(p["doc_id"], r["query_id"]) for p in r["positives"]])
        positives = beam.pvalue.AsSingleton(
            {"item": self.doc_vectors, "queries": positive_of}
            | "JoinPositiveVectors" >> beam.CoGroupByKey()
            | "PositiveVectors" >> beam.FlatMap(_with_queries)
            | "VectorList" >> beam.combiners.ToList(), default_value=[])
        parts.append(self.doc_vectors | "CosineNearPositives" >> beam.ParDo(_CosineNearPositives(self.settings.cosine), positives))
        return parts | "AllNear" >> beam.Flatten() | "GroupByQuery" >> beam.GroupByKey() | "MergeNear" >> beam.Map(_merge_near)


def drop_docs(cands: Dict[str, Any], drop: Iterable[str]) -> Tuple[Dict[str, Any], int]:
    """The candidate list without the documents in `drop` (every column filtered alike), and how many went."""
    drop = set(drop)
    keep = [i for i, d in enumerate(cands["doc_ids"]) if d not in drop]
    removed = len(cands["doc_ids"]) - len(keep)
    if not removed:
        return cands, 0
    out = dict(cands)
    for col in ("doc_ids", "ranks", "scores", "titles", "texts"):
        if cands.get(col) is not None:
            out[col] = [cands[col][i] for i in keep]
    return out, removed


class _DropNear(beam.DoFn):
    def __init__(self) -> None:
        self.removed = Metrics.counter(NAMESPACE, REASON)

    def process(self, element: Tuple[str, Dict[str, Any]], near: Dict[str, Dict[str, Any]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        qid, cands = element
        copies = near.get(qid)
        if copies:
            cands, removed = drop_docs(cands, copies)
            if removed:
                self.removed.inc(removed)
                Metrics.counter(NAMESPACE, f"{REASON}_{cands['source']}").inc(removed)
        yield qid, cands


class DropNearDuplicateCandidates(beam.PTransform):
    """(query_id, candidates) of every source -> the same lists without near copies of the query's
    positives. The filter step beside the positive-aware one: it runs before the sampler, so rows
    keep their counts from the other candidates."""

    def __init__(self, settings: NearDuplicateSettings, records: beam.PCollection, docs: beam.PCollection, work_dir: str,
                 num_shards: int = 1, doc_vectors: Optional[beam.PCollection] = None) -> None:
        super().__init__()
        self.settings, self.records, self.docs, self.doc_vectors = settings, records, docs, doc_vectors
        self.work_dir, self.num_shards = work_dir, num_shards

    def expand(self, candidates: beam.PCollection) -> beam.PCollection:
        near = self.records | "NearCopies" >> NearDuplicatesOfPositives(self.settings, self.docs, self.work_dir, self.num_shards,
                                                                        self.doc_vectors)
        return candidates | "DropNearCopies" >> beam.ParDo(_DropNear(), beam.pvalue.AsDict(near))
