"""Pretext pair generators on real SciFact abstracts: the properties each paper's recipe promises."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path
from typing import Dict, List, Sequence

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from tripleminer.schemas.inputs import validate_doc
from tripleminer.transforms import pretext as pt
from tripleminer.schemas.mix import parse_mix
from tripleminer.transforms.sample import sample_negatives
from tripleminer.transforms.text_units import STOPWORDS, span_key, split_sentences

N_DOCS = 300


@pytest.fixture(scope="module")
def docs(scifact: Path) -> List[Dict]:
    """The first SciFact abstracts, validated as the pipeline's readers would."""
    with (scifact / "corpus.jsonl").open(encoding="utf-8") as f:
        return [validate_doc(json.loads(line)) for line in itertools.islice(f, N_DOCS)]


def _within(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def _by_id(pairs: Sequence[Dict]) -> Dict[str, Dict]:
    return {pair["query_id"]: pair for pair in pairs}


# ------------------------------------------------------------------------------------ sentences


def test_sentences_are_exact_substrings_and_respect_abbreviations():
    text = "Mice (J. Smith et al. 2001) were used, e.g. in vitro. Levels rose 1.8-fold! Why? (n = 7) No."
    sentences = split_sentences(text)
    assert sentences == ["Mice (J. Smith et al. 2001) were used, e.g. in vitro.", "Levels rose 1.8-fold!", "Why?",
                         "(n = 7) No."]


@pytest.mark.slow
def test_sentences_of_scifact_cover_the_text(docs):
    for doc in docs:
        sentences = split_sentences(doc["text"])
        assert all(s in doc["text"] for s in sentences)
        assert " ".join(sentences).split() == doc["text"].split()


# ------------------------------------------------------------------------------------ ICT


@pytest.mark.slow
def test_ict_query_is_a_sentence_and_kept_with_probability_p(docs):
    config = pt.IctConfig(rate=10, query_in_block_prob=0.1)
    kept = total = 0
    for doc in docs:
        sentences = split_sentences(doc["text"])
        for pair in pt.ict_pairs(doc, seed=7, config=config):
            positive = pair["positives"][0]["text"]
            assert pair["query"] in sentences
            if positive == " ".join(sentences):
                kept += 1
            else:
                assert len(split_sentences(positive)) == len(sentences) - 1
                rest = " ".join(s for s in sentences if s != pair["query"])
                assert positive == rest or sentences.count(pair["query"]) > 1
            total += 1
    assert total >= 2000
    assert _within(kept / total, 0.1, total), kept / total


def test_ict_skips_passages_with_one_sentence():
    assert pt.ict_pairs({"doc_id": "d", "title": "", "text": "Only one sentence here."}, seed=0) == []


# ------------------------------------------------------------------------------------ crop


@pytest.mark.slow
def test_crops_are_contiguous_word_runs_within_ratio_bounds(docs):
    config = pt.CropConfig(rate=3, ratio_min=0.1, ratio_max=0.5)
    for doc in docs:
        words = doc["text"].split()
        n = len(words)
        for pair in pt.crop_pairs(doc, seed=3, config=config):
            for crop in (pair["query"], pair["positives"][0]["text"]):
                assert crop in doc["text"]
                length = len(crop.split())
                assert max(1, int(n * 0.1)) <= length <= int(n * 0.5)
                starts = [i for i in range(n - length + 1) if words[i : i + length] == crop.split()]
                assert starts, "crop is not a run of consecutive words"


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text("abcXY.,", min_size=1, max_size=6), min_size=10, max_size=80),
       ratios=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)), seed=st.integers(0, 2**31))
def test_crop_property_on_arbitrary_text(words, ratios, seed):
    low, high = sorted(ratios)
    text = "  ".join(words)
    config = pt.CropConfig(ratio_min=low, ratio_max=high)
    pair = pt.crop_pairs({"doc_id": "x", "title": "", "text": text}, seed, config)[0]
    for crop in (pair["query"], pair["positives"][0]["text"]):
        assert crop in text and crop == crop.strip()
        assert max(1, int(len(words) * low)) <= len(crop.split()) <= max(1, int(len(words) * high))


# ------------------------------------------------------------------------------------ span


def _valid_span_independently(span) -> bool:
    content = [w.lower() not in STOPWORDS and re.search(r"\w", w) for w in (span[0], span[-1])]
    single_ok = len(span) > 1 or span[0][0].isupper() or re.fullmatch(r"[+-]?\d+(?:[.,]\d+)*%?", span[0])
    return all(content) and bool(single_ok)


def _has(keys, span) -> bool:
    return bool(pt.find_span(keys, span))


def _is_subsequence(small, big) -> bool:
    it = iter(big)
    return all(word in it for word in small)


def _shared_spans(doc, pair, config) -> List[tuple]:
    """Recurring spans that explain the pair: shared by the positive and the passage the query was cut from."""
    passages = pt.split_passages(doc["text"], config.passage_words)
    keys = [[span_key(w) for w in p] for p in passages]
    positive = [" ".join(p) for p in passages].index(pair["positives"][0]["text"])
    query = [span_key(w) for w in pair["query"].split()]
    negatives = {int(doc_id.rsplit("#p", 1)[1]) for pool in pair["candidates"] for doc_id in pool["doc_ids"]}
    explained = []
    for span in pt.recurring_spans(keys, config.max_span_words):
        sources = [i for i, k in enumerate(keys) if i != positive and _has(k, span) and _is_subsequence(query, k)]
        lacking = {i for i, k in enumerate(keys) if not _has(k, span)}
        if _valid_span_independently(span) and _has(keys[positive], span) and sources and negatives == lacking:
            explained.append(span)
    return explained


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.0, 1.0])
def test_span_pairs_share_a_valid_recurring_span(docs, keep):
    config = pt.SpanConfig(keep_answer_prob=keep)
    pairs = 0
    for doc in docs:
        for pair in pt.span_pairs(doc, seed=5, config=config):
            spans = _shared_spans(doc, pair, config)
            query = [span_key(w) for w in pair["query"].split()]
            assert any(_has(query, s) == bool(keep) for s in spans), pair["query_id"]
            for pool in pair["candidates"]:
                assert pool["source"] == "same_doc" and pool["doc_ids"]
                assert all(doc_id.startswith(doc["doc_id"] + "#p") for doc_id in pool["doc_ids"])
            pairs += 1
    assert pairs >= N_DOCS // 2
    assert any(p["candidates"] for d in docs[:50] for p in pt.span_pairs(d, 5, config))


@pytest.mark.slow
def test_span_keeps_the_span_in_the_query_with_probability_p(docs):
    # Only the keep decision depends on keep_answer_prob, so a pair is "kept" when it equals its always-keep twin.
    kept, total = 0, 0
    for doc in docs:
        always = _by_id(pt.span_pairs(doc, 11, pt.SpanConfig(rate=4, keep_answer_prob=1.0)))
        for pair in pt.span_pairs(doc, 11, pt.SpanConfig(rate=4, keep_answer_prob=0.5)):
            kept += pair["query"] == always[pair["query_id"]]["query"]
            total += 1
    assert _within(kept / total, 0.5, total), kept / total


@pytest.mark.slow
def test_span_skips_documents_with_one_passage(docs):
    short = next(d for d in docs if len(d["text"].split()) <= 100)
    assert pt.span_pairs(short, 0, pt.SpanConfig(passage_words=100)) == []
    assert pt.span_pairs(docs[0], 0, pt.SpanConfig(passage_words=10_000)) == []


def test_recurring_span_filters():
    assert not pt.is_valid_span(("of", "the"))
    assert not pt.is_valid_span(("the", "cell", "line"))
    assert not pt.is_valid_span(("cell", "line", "of"))
    assert not pt.is_valid_span(("cells",))
    assert pt.is_valid_span(("MDSC",)) and pt.is_valid_span(("2001",))
    assert pt.is_valid_span(("bone", "of", "marrow"))


# ------------------------------------------------------------------------------------ augment


@pytest.mark.slow
def test_augment_rates_are_near_p(docs):
    text = " ".join(d["text"] for d in docs[:150])
    config = pt.AugmentConfig(deletion_prob=0.1, replacement_prob=0.1, masking_prob=0.1)
    out = pt.augment_text(text, random.Random(0), ["<REPL>"], config).split()
    n = len(text.split())
    assert n > 20_000
    assert _within(1 - len(out) / n, 0.1, n)
    assert _within(out.count("<REPL>") / n, 0.1, n)
    assert _within(out.count("[MASK]") / n, 0.1, n)


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=0, max_size=200), seed=st.integers(0, 2**31))
def test_augment_with_zero_probabilities_is_identity(text, seed):
    config = pt.AugmentConfig(deletion_prob=0, replacement_prob=0, masking_prob=0, sides=pt.SIDES)
    pair = {"query_id": "q", "query": text, "positives": [{"text": text, "source": "ict"}], "candidates": []}
    assert pt.augment_pair(pair, seed, [], config) == pair


@pytest.mark.slow
def test_augment_touches_only_the_configured_side(docs):
    pair = pt.ict_pairs(docs[0], 0)[0]
    out = pt.augment_pair(pair, 0, ["x"], pt.AugmentConfig(masking_prob=0.5, sides=("positive",)))
    assert out["query"] == pair["query"] and out["positives"][0]["text"] != pair["positives"][0]["text"]
    assert pair == pt.ict_pairs(docs[0], 0)[0], "the input pair must not be mutated"


@pytest.mark.slow
def test_vocabulary_sample_ignores_document_order(docs):
    sample = pt.vocabulary_sample(docs, 500, seed=1)
    assert len(sample) == 500 and sample == pt.vocabulary_sample(list(reversed(docs)), 500, seed=1)
    assert all(w.isalpha() for w in sample)


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.slow
@pytest.mark.parametrize("generate", [pt.ict_pairs, pt.crop_pairs, pt.span_pairs])
def test_same_seed_same_pairs_whatever_the_order(docs, generate):
    forward = [p for d in docs[:100] for p in generate(d, 42)]
    backward = [p for d in reversed(docs[:100]) for p in generate(d, 42)]
    assert _by_id(forward) == _by_id(backward) and len(_by_id(forward)) == len(forward)
    assert _by_id(forward) != _by_id([p for d in docs[:100] for p in generate(d, 43)])


def test_rng_derivation_is_pinned():
    # A salted hash() or a changed key layout would silently change every generated data set.
    assert pt.derive_rng(0, "ict", "4983", 0).random() == 0.9263842756699716


@pytest.mark.slow
def test_pair_index_rng_makes_higher_rates_extend_lower_ones(docs):
    one = _by_id(pt.span_pairs(docs[0], 1, pt.SpanConfig(rate=1)))
    three = _by_id(pt.span_pairs(docs[0], 1, pt.SpanConfig(rate=3)))
    assert one.items() <= three.items() and len(three) == 3


@pytest.mark.slow
def test_fractional_rate_gives_that_many_pairs_on_average(docs):
    total = sum(len(pt.crop_pairs(d, 0, pt.CropConfig(rate=0.3))) for d in docs)
    assert _within(total / len(docs), 0.3, len(docs))


@pytest.mark.parametrize("make", [
    lambda: pt.IctConfig(query_in_block_prob=1.5),
    lambda: pt.CropConfig(ratio_min=0.6),
    lambda: pt.CropConfig(min_words=0),
    lambda: pt.SpanConfig(rate=-1),
    lambda: pt.AugmentConfig(sides=("title",)),
    lambda: pt.AugmentConfig(deletion_prob=0.5, masking_prob=0.6),
])
def test_invalid_configs_are_rejected(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------------------------ Beam


@pytest.mark.slow
def test_beam_transforms_match_pure_functions(docs):
    sample = docs[:40]
    expected_span = [p for d in sample for p in pt.span_pairs(d, 9)]
    expected_ict = [pt.augment_pair(p, 9, pt.vocabulary_sample(sample, 200, 9))
                    for d in sample for p in pt.ict_pairs(d, 9)]
    with test_pipeline.TestPipeline() as p:
        corpus = p | beam.Create(sample)
        vocabulary = corpus | "Vocabulary" >> pt.SampleVocabulary(200, seed=9)
        span = corpus | "Span" >> pt.SpanPairs(seed=9)
        ict = corpus | "Ict" >> pt.IctPairs(seed=9) | "Augment" >> pt.AugmentPairs(vocabulary, seed=9)
        assert_that(span, equal_to(expected_span), label="SpanMatches")
        assert_that(ict, equal_to(expected_ict), label="IctMatches")


@pytest.mark.slow
def test_beam_counters_count_docs_pairs_and_skips(docs):
    sample = docs[:30] + [{"doc_id": "one", "title": "", "text": "A single sentence."}]
    pipeline = beam.Pipeline(runner="DirectRunner")
    _ = pipeline | beam.Create(sample) | pt.IctPairs(seed=0, config=pt.IctConfig(rate=2))
    result = pipeline.run()
    result.wait_until_finish()
    assert pt.counter_value(result, "ict", "docs") == 31
    expected = sum(len(pt.ict_pairs(d, 0, pt.IctConfig(rate=2))) for d in sample)
    assert pt.counter_value(result, "ict", "pairs") == expected
    assert pt.counter_value(result, "ict", "skipped_too_few_sentences") == 1


@pytest.mark.slow
def test_same_doc_candidates_feed_the_negative_sampler(docs):
    pair = next(p for d in docs for p in pt.span_pairs(d, 0) if p["candidates"])
    pools = {pool["source"]: pool for pool in pair["candidates"]}
    positive = pair["positives"][0]["doc_id"]
    negatives = sample_negatives(0, pair["query_id"], positive, [positive], pools, parse_mix("same_doc:3"))
    assert negatives
    assert all(n["source"] == "same_doc" and n["text"] and n["doc_id"] != positive for n in negatives)


@pytest.mark.slow
def test_generator_table_runs_generators_and_derives_their_options(docs):
    crop = pt.GENERATORS[pt.CROP]
    assert sum(len(crop.pairs(d, 0, crop.config())) for d in docs[:20]) == 20
    flags = {name: [o.flag for o in pt.generator_options(gen)] for name, gen in pt.GENERATORS.items()}
    assert flags == {"ict": ["--ict_query_in_block_prob"],
                     "crop": ["--crop_ratio_min", "--crop_ratio_max", "--crop_min_words"],
                     "span": ["--span_passage_words", "--span_max_span_words", "--span_query_window_words",
                              "--span_keep_answer_prob"],
                     "title": [],
                     "salient": ["--salient_spans", "--salient_remove_prob", "--salient_span_kinds", "--salient_min_words",
                                 "--salient_max_words", "--salient_candidates", "--salient_scorer"],
                     "neighbors": ["--neighbors_chunk_words"]}
    values = {o.dest: o.default for gen in pt.GENERATORS.values() for o in pt.generator_options(gen)}
    assert pt.make_config(pt.SPAN, 0.5, {**values, "span_passage_words": 50}) == pt.SpanConfig(0.5, passage_words=50)
    assert [o.flag for o in pt.augment_options()] == ["--augment_deletion_prob", "--augment_replacement_prob",
                                                      "--augment_masking_prob", "--augment_mask_token"]
    assert pt.make_augment_config(["positive"], {"augment_masking_prob": 0.3}) == pt.AugmentConfig(
        masking_prob=0.3, sides=("positive",))
