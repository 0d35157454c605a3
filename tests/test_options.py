"""Option groups, strict argument checking, and the typed settings both pipelines are planned into."""

from __future__ import annotations

import dataclasses

import pytest

from tripleminer.pipelines import mine, pretext
from tripleminer.pipelines.options import option_names, unknown_arguments
from tripleminer.schemas.mix import SOURCES, offered_sources
from tripleminer.transforms.candidates import builder

BASE = ["--corpus", "c.jsonl", "--output", "out"]


def mine_settings(*extra: str) -> mine.MineSettings:
    return mine.plan(mine.SPEC.options(BASE + ["--qrels", "q.tsv", "--query_log", "log.jsonl", *extra]))


def mine_settings_without_log(*extra: str) -> mine.MineSettings:
    return mine.plan(mine.SPEC.options(BASE + ["--qrels", "q.tsv", *extra]))


def pretext_settings(*extra: str) -> pretext.PretextSettings:
    return pretext.plan(pretext.SPEC.options(BASE + list(extra)))


def test_a_misspelled_option_stops_the_run_naming_the_closest_one(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        mine.run(["--corpus", "c.jsonl", "--qrels", "q.tsv", "--output", str(out), "--min_clickz", "3"])
    assert exit_info.value.code == 2
    assert "unknown option --min_clickz (did you mean --min_clicks?)" in capsys.readouterr().err
    assert not out.exists(), "a refused run must not touch the output"


def test_another_pipelines_option_is_unknown_here():
    assert unknown_arguments(["--generators", "ict:1"], mine.GROUPS) == ["unknown option --generators"]
    assert unknown_arguments(["--query_log", "log.jsonl"], pretext.GROUPS) == ["unknown option --query_log"]
    assert unknown_arguments(["--negatives=bm25:1", "--seed", "3"], pretext.GROUPS) == []


def test_beam_and_runner_options_are_accepted():
    argv = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
            "--project", "p", "--temp_location", "gs://b/t", "--flink_master", "localhost:8081", "--environment_type", "LOOPBACK"]
    assert unknown_arguments(argv, mine.GROUPS) == []
    assert unknown_arguments(["stray"], mine.GROUPS) == ["unexpected argument 'stray'"]


def test_required_options_are_enforced(capsys):
    with pytest.raises(SystemExit):
        mine.SPEC.options(["--corpus", "c.jsonl"])
    assert "required: --output" in capsys.readouterr().err


def test_every_option_is_declared_by_exactly_one_group():
    groups = set(mine.GROUPS) | set(pretext.GROUPS)
    names = [option_names([g]) for g in groups]
    assert sum(len(n) for n in names) == len(set().union(*names))


def test_per_pipeline_defaults_are_set_in_code_and_recorded():
    m, p = mine_settings(), pretext_settings()
    assert m.triples.config["negatives"] == mine.DEFAULT_MIX
    assert p.triples.config["negatives"] == pretext.DEFAULT_MIX
    assert p.triples.config["generators"] == pretext.DEFAULT_GENERATORS
    assert m.triples.sources == ("impression", "ann", "gold", "random")
    assert pretext_settings("--generators", "span:2").triples.config["generators"] == "span:2"
    assert "overwrite" not in m.triples.config and "generators" not in m.triples.config
    assert "query_log" not in p.triples.config


def test_settings_are_typed_frozen_and_resolve_the_ntuple_size():
    s = mine_settings("--negatives", "bm25:2,random:3", "--output_format", "n-tuple")
    assert s.triples.output.ntuple_negatives == 5 and s.triples.output.format == "n-tuple"
    assert mine_settings("--negatives", "bm25:2", "--ntuple_negatives", "1").triples.output.ntuple_negatives == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.triples.output.path = "elsewhere"
    assert s.triples.candidates.bm25.depth is None and s.triples.denoise is None


def test_generator_options_come_from_the_generator_table():
    s = pretext_settings("--generators", "crop:0.5,span", "--crop_ratio_max", "0.4", "--span_passage_words", "50")
    (crop_name, crop), (span_name, span) = s.generators
    assert (crop_name, crop.rate, crop.ratio_max) == ("crop", 0.5, 0.4)
    assert (span_name, span.rate, span.passage_words) == ("span", 1.0, 50)


@pytest.mark.parametrize("plan, extra, message", [
    (mine_settings_without_log, ["--negatives", "impression:1"], "impression negatives need --query_log"),
    (mine_settings, ["--negatives", "random:1@1-5"], "random is unranked"),
    (mine_settings, ["--negatives", "bm25:1", "--pos_aware_ratio", "0.95"], "add ann to --negatives"),
    (mine_settings, ["--negatives", "same_doc:1"], "unknown source 'same_doc'"),
    (mine_settings, ["--negatives", "none", "--output_format", "n-tuple"], "needs at least one negative"),
    (pretext_settings, ["--negatives", "impression:1"], "unknown source 'impression'"),
    (pretext_settings, ["--generators", "ict", "--negatives", "same_doc:1"], "same_doc negatives come with span pairs"),
    (pretext_settings, ["--generators", "ict", "--ict_query_in_block_prob", "2"], "--generators ict"),
    (pretext_settings, ["--augment", "sideways"], "--augment"),
])
def test_configuration_errors_name_the_option(plan, extra, message):
    with pytest.raises(ValueError, match=message):
        plan(*extra)


def test_the_source_table_drives_offers_and_builders():
    assert offered_sources("log") == ("impression", "bm25", "ann", "gold", "random")
    assert offered_sources("pair") == ("bm25", "ann", "same_doc", "gold", "random")
    for source in SOURCES.values():
        assert (builder(source.name) is None) == (source.origin == "pair")


def test_help_lists_every_source_and_ranked_window(capsys):
    with pytest.raises(SystemExit):
        pretext.SPEC.options(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ranked sources: impression, bm25, ann" in text
    assert pretext.DEFAULT_MIX in text and pretext.DEFAULT_GENERATORS in text
    for source in SOURCES:
        assert f"{source} (" in text


def test_the_default_filters_come_with_the_default_mix_only():
    """They were measured together; a user's own mix gets no filter it did not ask for; 0 turns one off."""
    policy = mine_settings().triples.policy
    assert (policy.max_score_ratio, policy.max_positive_rank) == (0.95, 50)
    own = mine_settings("--negatives", "ann:2@10-100").triples.policy
    assert (own.max_score_ratio, own.max_positive_rank) == (None, None)
    off = mine_settings("--max_positive_rank", "0", "--pos_aware_ratio", "0.9").triples.policy
    assert (off.max_score_ratio, off.max_positive_rank) == (0.9, None)
    assert pretext_settings().triples.policy.max_positive_rank is None
    with pytest.raises(ValueError, match="add ann"):
        mine_settings("--negatives", "bm25:2", "--max_positive_rank", "10")


def test_max_positive_rank_fetches_deep_enough_to_rank_a_positive_past_it():
    """A window ending at the limit would fetch too few candidates for the filter ever to fire."""
    depth = lambda *extra: mine_settings(*extra).triples.candidates.dense.depth  # noqa: E731
    assert depth("--negatives", "ann:5@10-50", "--max_positive_rank", "50") == 100
    assert depth("--negatives", "ann:2@30-300", "--max_positive_rank", "50") == 300
    assert depth("--negatives", "ann:5@10-50", "--max_positive_rank", "50", "--ann_depth", "60") == 60
    assert depth("--negatives", "ann:5@10-50") is None  # no filter: the window's end, as before
    assert depth() == 100  # the default mix (ann:3@10-100, limit 50) fetches what it did


def test_the_default_mix_drops_log_sources_without_a_query_log():
    assert mine_settings_without_log().triples.sources == ("ann", "gold", "random")
    assert mine_settings_without_log("--negatives", "bm25:1").triples.sources == ("bm25",)
    assert mine_settings("--max_positives_per_query", "2").triples.policy.max_positives == 2
    with pytest.raises(ValueError, match="--max_positives_per_query"):
        mine_settings("--max_positives_per_query", "0")
