"""AugTriever's title and salient-span pairs and CPT's neighbouring chunks, on real SciFact abstracts:
the invariants each recipe promises, the rate and seed behaviour every generator shares, the Beam
transforms and their counters, and one small `tripleminer pretext` run."""

from __future__ import annotations

import collections
import functools
import json
from typing import Callable, Dict, List

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import read_rows
from test_pretext import _by_id, _within, docs  # noqa: F401 (docs is a fixture: the first SciFact abstracts)
from tripleminer.encoders import Encoder, EncoderSettings, default_model
from tripleminer.index.bm25 import BM25Settings
from tripleminer.pipelines import pretext
from tripleminer.transforms import pretext as pt
from tripleminer.transforms.text_units import span_key, split_sentences, word_offsets, words

SEED = 11
# Too short for two 64-word chunks, one sentence (so no salient candidate but n-grams), no title.
SHORT = {"doc_id": "short", "title": "", "text": "Vitamin D deficiency raises fracture risk in elderly patients."}
ECHO = {"doc_id": "echo", "title": "Aspirin  and STROKE.", "text": "aspirin and stroke."}  # title == text, normalised


def _keys(text: str) -> List[str]:
    return [span_key(w) for w in words(text)]


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def salience(docs) -> pt.Bm25Salience:
    """The bm25 scorer with document frequencies over the whole slice, as the pipeline computes them."""
    return pt.Bm25Salience(pt.term_stats(docs, BM25Settings().stemmer))


@pytest.fixture(scope="module")
def generators(salience) -> Dict[str, Callable[..., List[Dict]]]:
    """Each new generator's pure function as (doc, seed, config) -> records."""
    return {pt.TITLE: pt.title_pairs, pt.NEIGHBORS: pt.neighbors_pairs,
            pt.SALIENT: functools.partial(pt.salient_pairs, salience=salience)}


# ------------------------------------------------------------------------------------ title


@pytest.mark.slow
def test_title_is_the_query_and_the_body_the_positive_never_the_document_itself(docs):
    for doc in docs + [ECHO, SHORT]:
        pairs = pt.title_pairs(doc, SEED)
        if doc in (ECHO, SHORT):
            assert pairs == []
            continue
        (pair,) = pairs
        positive = pair["positives"][0]
        assert pair["query"] == doc["title"] and positive["text"] == doc["text"]
        assert positive["title"] == "" and positive["doc_id"] == doc["doc_id"] and positive["source"] == pt.TITLE
        assert _normalised(pair["query"]) != _normalised(positive["text"])


def test_title_rate_above_one_is_refused():
    with pytest.raises(ValueError, match="rate must be in"):
        pt.TitleConfig(rate=2)


# ------------------------------------------------------------------------------------ salient


@pytest.mark.slow
@pytest.mark.parametrize("kinds", ["sentence,ngram,random", "sentence", "ngram"])
def test_salient_span_comes_from_its_document(docs, salience, kinds):
    config = pt.SalientConfig(rate=3, span_kinds=kinds)
    for doc in docs[:100]:
        sentences = split_sentences(doc["text"])
        for pair in pt.salient_pairs(doc, SEED, config, salience=salience):
            span = pair["query"]
            assert span in doc["text"] and len(words(span)) < len(words(doc["text"]))
            assert pair["positives"][0]["title"] == doc["title"]
            if kinds == "sentence":
                assert span in sentences
            if kinds == "ngram":
                assert config.min_words <= len(words(span)) <= config.max_words
                assert pt.is_valid_span(tuple(_keys(span)))


@pytest.mark.slow
@pytest.mark.parametrize("remove_prob", [0.0, 1.0])
def test_salient_span_is_cut_from_the_positive_with_probability_p(docs, salience, remove_prob):
    config = pt.SalientConfig(rate=3, remove_prob=remove_prob)
    pairs = [(d, p) for d in docs[:100] for p in pt.salient_pairs(d, SEED, config, salience=salience)]
    assert len(pairs) == 300
    for doc, pair in pairs:
        positive, span = pair["positives"][0]["text"], tuple(_keys(pair["query"]))
        if remove_prob == 1.0:
            assert pt.find_span(_keys(positive), span) == []
            assert len(words(positive)) < len(words(doc["text"]))
        else:
            assert positive == " ".join(words(doc["text"])) and pt.find_span(_keys(positive), span)


@pytest.mark.slow
def test_salient_removal_rate_is_near_p(docs, salience):
    config = pt.SalientConfig(rate=2, remove_prob=0.5)
    pairs = [(d, p) for d in docs for p in pt.salient_pairs(d, SEED, config, salience=salience)]
    removed = sum(p["positives"][0]["text"] != " ".join(words(d["text"])) for d, p in pairs)
    assert _within(removed / len(pairs), 0.5, len(pairs))


@pytest.mark.slow
def test_salient_query_is_the_most_salient_candidate(docs, salience):
    """With every n-gram a candidate and one span kept, the query is the best-scoring n-gram of its document."""
    config = pt.SalientConfig(spans=1, span_kinds="ngram", candidates=100_000)
    for doc in docs[:40]:
        text, offsets, keys = doc["text"], word_offsets(doc["text"]), _keys(doc["text"])
        ngrams = [pt.word_run(text, offsets, i, n) for n in range(config.min_words, config.max_words + 1)
                  for i in range(len(keys) - n + 1) if pt.is_valid_span(tuple(keys[i : i + n]))]
        (pair,) = pt.salient_pairs(doc, SEED, config, salience=salience)
        assert salience(text, [pair["query"]])[0] == pytest.approx(max(salience(text, ngrams)))


@pytest.mark.slow
def test_bm25_salience_uses_corpus_document_frequencies(docs):
    """The same span of the same document is less salient where its terms are common across the corpus."""
    doc = docs[0]
    span = pt.word_run(doc["text"], word_offsets(doc["text"]), 0, 4)
    alone = pt.Bm25Salience(pt.term_stats([doc] * 50, "english"))  # every term in every document
    corpus = pt.Bm25Salience(pt.term_stats(docs, "english"))
    assert alone(doc["text"], [span])[0] < corpus(doc["text"], [span])[0]
    assert corpus(doc["text"], ["the of and"]) == [0.0]  # stopwords only: no term to score


@pytest.mark.slow
def test_dense_salience_with_the_real_bi_encoder(docs):
    """The dense scorer on a few abstracts: the query is the sentence closest to its document, and the
    Beam transform (which loads the model in setup) gives the same pairs as the pure function."""
    sample = docs[:6]
    config = pt.SalientConfig(spans=1, span_kinds="sentence", candidates=100, scorer="dense",
                              encoder=EncoderSettings(default_model()))
    encoder = Encoder(config.encoder)
    dense = pt.DenseSalience(encoder)
    pairs = [p for d in sample for p in pt.salient_pairs(d, SEED, config, salience=dense)]
    assert len(pairs) == len(sample)
    for doc, pair in zip(sample, pairs):
        scores = dense(doc["text"], [pair["query"]] + split_sentences(doc["text"]))
        assert pair["query"] in split_sentences(doc["text"])
        assert -1.0 <= scores[0] <= 1.0 and scores[0] >= max(scores) - 1e-4  # every sentence is a candidate
    pipeline = beam.Pipeline(runner="DirectRunner")
    assert_that(pipeline | beam.Create(sample) | pt.SalientPairs(SEED, config), equal_to(pairs))
    pipeline.run().wait_until_finish()


# ------------------------------------------------------------------------------------ neighbors


@pytest.mark.slow
def test_neighbors_are_adjacent_disjoint_chunks_of_the_document(docs):
    config = pt.NeighborsConfig(rate=3, chunk_words=20)
    for doc in docs + [SHORT]:
        pairs = pt.neighbors_pairs(doc, SEED, config)
        doc_words = words(doc["text"])
        assert len(pairs) == (3 if len(doc_words) >= 40 else 0)
        for pair in pairs:
            query, positive = pair["query"], pair["positives"][0]["text"]
            assert query in doc["text"] and positive in doc["text"] and pair["positives"][0]["title"] == ""
            assert len(words(query)) == len(words(positive)) == 20
            # one run of 40 consecutive words of the document, in one order or the other: adjacent and disjoint
            forward, backward = words(query) + words(positive), words(positive) + words(query)
            assert pt.find_span(doc_words, tuple(forward)) or pt.find_span(doc_words, tuple(backward))


# ------------------------------------------------------------------------------------ rates and seeds


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [(pt.TITLE, pt.TitleConfig(rate=0.5)), (pt.NEIGHBORS, pt.NeighborsConfig()),
                                          (pt.SALIENT, pt.SalientConfig())])
def test_same_seed_same_pairs_whatever_the_order(docs, generators, name, config):
    generate = generators[name]
    forward = [p for d in docs[:100] for p in generate(d, 42, config)]
    backward = [p for d in reversed(docs[:100]) for p in generate(d, 42, config)]
    assert _by_id(forward) == _by_id(backward) and len(_by_id(forward)) == len(forward) > 0
    assert _by_id(forward) != _by_id([p for d in docs[:100] for p in generate(d, 43, config)])


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [(pt.TITLE, pt.TitleConfig), (pt.NEIGHBORS, pt.NeighborsConfig),
                                          (pt.SALIENT, pt.SalientConfig)])
def test_rate_half_takes_about_half_the_documents(docs, generators, name, config):
    generate = generators[name]
    eligible = [d for d in docs if generate(d, SEED, config(rate=1))]
    taken = sum(len(generate(d, SEED, config(rate=0.5))) for d in eligible)
    assert len(eligible) > 200 and _within(taken / len(eligible), 0.5, len(eligible))


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [(pt.NEIGHBORS, pt.NeighborsConfig), (pt.SALIENT, pt.SalientConfig)])
def test_higher_rates_extend_lower_ones(docs, generators, name, config):
    one = _by_id(generators[name](docs[0], SEED, config(rate=1)))
    three = _by_id(generators[name](docs[0], SEED, config(rate=3)))
    assert one.items() <= three.items() and len(three) == 3


@pytest.mark.parametrize("make", [
    lambda: pt.SalientConfig(scorer="tfidf"),
    lambda: pt.SalientConfig(span_kinds="words"),
    lambda: pt.SalientConfig(span_kinds=""),
    lambda: pt.SalientConfig(min_words=4, max_words=3),
    lambda: pt.SalientConfig(remove_prob=1.5),
    lambda: pt.SalientConfig(spans=0),
    lambda: pt.NeighborsConfig(chunk_words=0),
    lambda: pt.NeighborsConfig(rate=-1),
])
def test_invalid_configs_are_rejected(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------------------------ Beam


@pytest.mark.slow
def test_beam_transforms_match_pure_functions_and_count_skips(docs):
    sample = docs[:30] + [SHORT, ECHO]
    bm25 = pt.Bm25Salience(pt.term_stats(sample, BM25Settings().stemmer))  # the transform's own statistics
    pure = {pt.TITLE: pt.title_pairs, pt.NEIGHBORS: pt.neighbors_pairs,
            pt.SALIENT: functools.partial(pt.salient_pairs, salience=bm25)}
    configs = {pt.TITLE: pt.TitleConfig(), pt.NEIGHBORS: pt.NeighborsConfig(rate=2), pt.SALIENT: pt.SalientConfig(rate=2)}
    expected = {name: [p for d in sample for p in pure[name](d, SEED, configs[name])] for name in pure}
    pipeline = beam.Pipeline(runner="DirectRunner")
    corpus = pipeline | beam.Create(sample)
    for name in pure:
        got = corpus | f"{name}Pairs" >> pt.GENERATORS[name].transform(SEED, configs[name])
        assert_that(got, equal_to(expected[name]), label=f"{name}Matches")
    result = pipeline.run()
    result.wait_until_finish()
    for name in pure:
        assert pt.counter_value(result, name, "docs") == len(sample)
        assert pt.counter_value(result, name, "pairs") == len(expected[name])
    assert pt.counter_value(result, pt.TITLE, "skipped_no_title") == 1
    assert pt.counter_value(result, pt.TITLE, "skipped_title_is_text") == 1
    short_of_words = sum(len(words(d["text"])) < 128 for d in sample)
    assert short_of_words >= 2 and pt.counter_value(result, pt.NEIGHBORS, "skipped_too_few_words") == short_of_words
    assert pt.counter_value(result, pt.SALIENT, "skipped_no_candidates") == 0  # SHORT's n-grams are candidates


# ------------------------------------------------------------------------------------ pipeline

N_PIPELINE_DOCS = 30
PIPELINE_GENERATORS = "title:1,salient:1,neighbors:1"
PIPELINE_MIX = "bm25:2@1-50,random:1"


@pytest.mark.slow
def test_pretext_pipeline_with_the_new_generators(docs, tmp_path):
    sample = docs[:N_PIPELINE_DOCS] + [SHORT, ECHO]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in sample), encoding="utf-8")
    stats = pretext.run(["--corpus", str(corpus), "--output", str(tmp_path / "out"), "--work_dir", str(tmp_path / "work"),
                         "--generators", PIPELINE_GENERATORS, "--negatives", PIPELINE_MIX, "--seed", str(SEED),
                         "--salient_spans", "2", "--neighbors_chunk_words", "40"])
    rows = read_rows(tmp_path / "out")
    bm25 = pt.Bm25Salience(pt.term_stats(sample, BM25Settings().stemmer))
    want = _by_id([p for d in sample for p in pt.title_pairs(d, SEED)]
                  + [p for d in sample for p in pt.neighbors_pairs(d, SEED, pt.NeighborsConfig(chunk_words=40))]
                  + [p for d in sample for p in pt.salient_pairs(d, SEED, pt.SalientConfig(spans=2), salience=bm25)])
    assert sorted(r["query_id"] for r in rows) == sorted(want)
    by_id = {d["doc_id"]: d for d in sample}
    for r in rows:
        pair = want[r["query_id"]]
        assert r["query"] == pair["query"] and r["positive"]["text"] == pair["positives"][0]["text"]
        ids = [n["doc_id"] for n in r["negatives"]]
        assert r["positive"]["doc_id"] not in ids and all(n["text"] == by_id[n["doc_id"]]["text"] for n in r["negatives"])
    assert stats["positives_per_source"] == dict(collections.Counter(r["positive"]["source"] for r in rows))
    per_gen = stats["pretext"]
    assert all(per_gen[g]["docs"] == len(sample) for g in (pt.TITLE, pt.SALIENT, pt.NEIGHBORS))
    assert per_gen[pt.TITLE]["skipped"] == {"no_title": 1, "title_is_text": 1}
    assert per_gen[pt.TITLE]["pairs"] == N_PIPELINE_DOCS and per_gen[pt.SALIENT]["pairs"] == len(sample)
    assert per_gen[pt.NEIGHBORS]["pairs"] + per_gen[pt.NEIGHBORS]["skipped"]["too_few_words"] == len(sample)


def test_plan_shares_the_bm25_analyzer_and_bi_encoder_and_names_bad_options(tmp_path):
    base = ["--corpus", "c.jsonl", "--output", str(tmp_path / "out"), "--negatives", "bm25:1"]
    s = pretext.plan(pretext.SPEC.options(base + ["--generators", "salient", "--salient_scorer", "dense", "--model", "m",
                                                  "--bm25_stemmer", "", "--salient_spans", "5"]))
    (name, config), = s.generators
    assert (name, config.scorer, config.spans, config.encoder.model, config.bm25.stemmer) == ("salient", "dense", 5, "m", "")
    for bad, message in [("title:2", "--generators title: rate must be in"),
                         ("salient", "--generators salient: scorer must be one of")]:
        with pytest.raises(ValueError, match=message):
            pretext.plan(pretext.SPEC.options(base + ["--generators", bad, "--salient_scorer", "tfidf"]))


def test_help_explains_the_new_options(capsys):
    with pytest.raises(SystemExit):
        pretext.SPEC.options(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (pt.TITLE, pt.SALIENT, pt.NEIGHBORS):
        assert f"{name} (" in text  # in the --generators list, with its one-line help
    for gen in (pt.GENERATORS[pt.SALIENT], pt.GENERATORS[pt.NEIGHBORS]):
        for option in pt.generator_options(gen):
            assert f"{option.flag} " in text and " ".join(option.help.split())[:40] in text
    assert "--salient_bm25" not in text and "--salient_encoder" not in text
