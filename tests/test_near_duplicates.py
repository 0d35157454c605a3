"""Near-duplicate negatives (transforms/near_duplicates.py, tripleminer/minhash.py) on hand-built
records: MinHash estimates the Jaccard of the shingle sets, the LSH index finds near copies and only
them, and a near copy of a query's positive leaves every source's candidate lists of that query
(counted per source) while the same document stays a candidate of a query whose positive it does
not copy."""

from __future__ import annotations

import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import query_record, run
from tripleminer import minhash
from tripleminer.transforms.common import candidates
from tripleminer.transforms.near_duplicates import (DropNearDuplicateCandidates, NearDuplicateSettings, NearDuplicatesOfPositives,
                                                    drop_docs)

WORDS = ("protein kinase receptor signalling pathway mutation expression tumour cell growth factor binding domain "
         "inhibitor response patients trial cohort risk association gene variant cancer immune infection").split()


def abstract(seed: int, n: int = 80) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(40)) for _ in range(n))


def reword(text: str, share: float, seed: int) -> str:
    """Replace `share` of the words with other words (the benchmark's planted near copies)."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), round(share * len(words))):
        words[i] = "reworded" + str(rng.randrange(10_000))
    return " ".join(words)


POSITIVE = abstract(1)
DOCS = {
    "pos": POSITIVE,
    "copy": reword(POSITIVE, 0.10, 7),  # a near copy of pos (10% of the words reworded)
    "other": abstract(2),
    "third": abstract(3),
}


def doc(doc_id: str) -> dict:
    return {"doc_id": doc_id, "title": "", "text": DOCS[doc_id]}


# ------------------------------------------------------------------ pure helpers


def test_normalise_ignores_case_punctuation_and_spacing():
    assert minhash.normalise("  The  CAT, sat!\n(on) the mat. ") == "the cat sat on the mat"
    assert minhash.shingles("a b c", 2) == {"a b", "b c"}
    assert minhash.shingles("a", 2) == {"a"} and minhash.shingles("", 2) == set()


def test_signatures_estimate_the_jaccard_of_the_shingle_sets():
    for share in (0.05, 0.10, 0.15, 0.5):
        copy = reword(POSITIVE, share, 3)
        exact = minhash.exact_jaccard(minhash.shingles(POSITIVE, 2), minhash.shingles(copy, 2))
        est = minhash.jaccard(minhash.signature(POSITIVE, 2), minhash.signature(copy, 2))
        assert abs(est - exact) < 0.15, (share, exact, est)  # 3.4 standard errors at 128 slots
    same = minhash.signature("The cat sat.", 1)
    assert np.array_equal(same, minhash.signature("the CAT   sat", 1))  # normalised before hashing
    assert minhash.jaccard(same, minhash.signature("dogs bark loudly", 1)) < 0.1


def test_lsh_index_returns_exactly_the_indexed_texts_above_the_threshold():
    index = minhash.build_index([(k, minhash.signature(t, 2)) for k, t in DOCS.items()], 0.5)
    found = index.query(minhash.signature(DOCS["copy"], 2))
    assert [k for k, _ in found] == ["copy", "pos"] and found[0][1] == 1.0 and 0.5 <= found[1][1] < 1.0
    assert [k for k, _ in index.query(minhash.signature(abstract(99), 2))] == []
    with pytest.raises(ValueError):
        minhash.LshIndex(0.0)


def test_drop_docs_filters_every_column_alike():
    c = candidates("bm25", ["a", "b", "c"], ranks=[1, 2, 3], scores=[3.0, 2.0, 1.0])
    kept, removed = drop_docs(c, {"b", "zz"})
    assert removed == 1 and kept["doc_ids"] == ["a", "c"] and kept["ranks"] == [1, 3] and kept["scores"] == [3.0, 1.0]
    assert kept["texts"] is None and c["doc_ids"] == ["a", "b", "c"]  # the input is left alone
    assert drop_docs(c, set()) == (c, 0)


def test_settings_check_their_thresholds():
    assert not NearDuplicateSettings().active and NearDuplicateSettings(jaccard=0.5).active
    with pytest.raises(ValueError, match="--dup_jaccard"):
        NearDuplicateSettings(jaccard=1.5)


# ------------------------------------------------------------------ Beam


def test_a_near_copy_of_a_positive_leaves_every_source_of_that_query_only(tmp_path):
    records = [query_record("q1", ["pos"]), query_record("q2", ["other"]),
               query_record("q3", ["pos", "copy"])]  # copy is q3's positive too: excluded anyway, not counted
    cands = [
        ("q1", candidates("bm25", ["copy", "third"], ranks=[1, 2], scores=[9.0, 4.0])),
        ("q1", candidates("random", ["third", "copy"])),
        ("q2", candidates("bm25", ["copy", "pos"], ranks=[1, 2], scores=[5.0, 4.0])),  # not near q2's positive
        ("q3", candidates("random", ["copy", "third"])),
    ]
    want = [
        ("q1", candidates("bm25", ["third"], ranks=[2], scores=[4.0])),
        ("q1", candidates("random", ["third"])),
        cands[2], cands[3],
    ]

    def build(p: beam.Pipeline) -> None:
        docs = p | "Docs" >> beam.Create([doc(d) for d in DOCS])
        recs = p | "Records" >> beam.Create(records)
        near = recs | "Near" >> NearDuplicatesOfPositives(NearDuplicateSettings(jaccard=0.5), docs, str(tmp_path))
        assert_that(near | beam.MapTuple(lambda q, m: (q, sorted(m), sorted(v["positive"] for v in m.values()))),
                    equal_to([("q1", ["copy"], ["pos"])]), label="NearMap")
        out = p | "Candidates" >> beam.Create(cands) | DropNearDuplicateCandidates(NearDuplicateSettings(jaccard=0.5), recs, docs, str(tmp_path), 2)
        assert_that(out, equal_to(want), label="Filtered")

    c = run(build)["filter"]
    assert c["near_duplicate_of_positive"] == 2
    assert c["near_duplicate_of_positive_bm25"] == 1 and c["near_duplicate_of_positive_random"] == 1
    assert c["near_duplicate_pairs"] == 2  # copy of q1's pos, once in each of the two transforms (q3 holds both)
    assert len(list(tmp_path.glob("indices/minhash-*/shard-*"))) == 1 + 2  # one index, and a two-shard one


def test_cosine_near_copies_come_from_the_document_vectors(tmp_path):
    vectors = {"pos": [1.0, 0.0], "copy": [0.995, 0.0998], "other": [0.0, 1.0], "third": [0.6, 0.8]}

    def build(p: beam.Pipeline) -> None:
        docs = p | "Docs" >> beam.Create([doc(d) for d in DOCS])
        vecs = p | "Vectors" >> beam.Create(list(vectors.items()))
        recs = p | "Records" >> beam.Create([query_record("q1", ["pos"])])
        near = recs | NearDuplicatesOfPositives(NearDuplicateSettings(cosine=0.99), docs, str(tmp_path), doc_vectors=vecs)
        assert_that(near | beam.MapTuple(lambda q, m: (q, sorted(m), m["copy"]["cosine"] > 0.99)), equal_to([("q1", ["copy"], True)]))

    run(build)
    with pytest.raises(ValueError, match="add ann"):
        NearDuplicatesOfPositives(NearDuplicateSettings(cosine=0.99), None, "work")
