"""Hard positives from failed searches (Huang et al., Embedding-based Retrieval in Facebook Search, 2020).

A search without a click, followed in the same user session within `window_s` by a search with
clicks, is a failed search: the user reworded the need and found it. The failed query gets the
follow-up's clicked documents as candidate positives: the documents its retriever should have
found. Taken as they come these are noisy (topic switches, noise clicks), so each (failed query,
clicked document) pair passes these filters, in this order; the first one it fails is its verdict:

    unrelated_query         the two queries share too few content words (`relatedness`): a topic switch
    shown_in_failed_search  the failed search showed the document and the user passed it by
    click_rank              clicked below `max_click_rank` on the follow-up's page (noise clicks spread down
                            the page, clicks on what the query asked for gather at the top)
    unknown_doc             not a corpus document
    doc_coverage            the document holds too few of the failed query's content words (`doc_coverage`):
                            it answers the follow-up, not what the failed query asked

Every failed search ends in one outcome and every candidate pair in one verdict, each counted under
`failed_search/` (`failed_*`, `pairs_*`). The measured defaults are in `FailedSearchSettings`; the
pure functions below are what `benchmarks/failed_search.py` measures against the journeys log's truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from tripleminer.index.bm25 import analyze
from tripleminer.schemas.inputs import parse_timestamp
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.positives import positive

NAMESPACE = "failed_search"
SOURCE = "failed_search"
KEPT = "kept"
UNRELATED, SHOWN, CLICK_RANK, UNKNOWN_DOC, DOC_COVERAGE = (
    "unrelated_query", "shown_in_failed_search", "click_rank", "unknown_doc", "doc_coverage")
VERDICTS = (KEPT, UNRELATED, SHOWN, CLICK_RANK, UNKNOWN_DOC, DOC_COVERAGE)
# How a failed search ends (each is counted as failed_<outcome>; they add up to failed_searches).
OUTCOMES = ("with_positive", "without_clicked_followup", "without_query_text", "unrelated_followup", "all_clicks_rejected")


@dataclass(frozen=True)
class FailedSearchSettings:
    """The rule and its filters (the `--failed_search_*` options). Defaults measured on the SciFact
    journeys log by benchmarks/failed_search.py: precision 0.948 at recall 0.339 (naive rule 0.540 / 0.285)."""

    window_s: float = 120.0  # the follow-up starts at most this many seconds after the failed search
    min_relatedness: float = 0.5  # content-word overlap of the two queries (0 or 1 on the journeys log: any value in (0, 1] is the same there)
    max_click_rank: int = 4  # the click's position on the follow-up's page; 0: any
    min_doc_coverage: float = 0.3  # share of the failed query's content words the document holds
    stemmer: str = "english"  # the BM25 analyzer's (--bm25_stemmer), so "content word" means what BM25 matches

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"--failed_search_window_s must be > 0, got {self.window_s}")
        for name in ("min_relatedness", "min_doc_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--failed_search_{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_click_rank < 0:
            raise ValueError(f"--failed_search_max_click_rank must be >= 0 (0: any rank), got {self.max_click_rank}")


@dataclass(frozen=True)
class Search:
    """One search of a user session, as the rule reads it."""

    session_id: str
    query_id: str
    query: str  # "" when the log has no text for it
    time: float  # seconds since the epoch
    impressions: Tuple[str, ...]
    clicks: Tuple[str, ...]

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> "Search":
        """From a validated log record (one with a user session, so its timestamp parses)."""
        return cls(record["session_id"], record["query_id"], record["query"] or "", parse_timestamp(record["timestamp"]),
                   tuple(record["impressions"]), tuple(record["clicks"]))

    def click_rank(self, doc_id: str) -> int:
        """1-based position of `doc_id` on this page; a clicked document not listed ranks just past the page."""
        return self.impressions.index(doc_id) + 1 if doc_id in self.impressions else len(self.impressions) + 1


@dataclass(frozen=True)
class FailedSearch:
    """A search without a click and its follow-up, the first later search with a click in the window (None: none)."""

    failed: Search
    followup: Optional[Search]

    @property
    def gap_s(self) -> float:
        return self.followup.time - self.failed.time


@dataclass(frozen=True)
class Candidate:
    """A (failed query, clicked document) pair with what the filters read, before the document's words are known."""

    failed_session_id: str
    query_id: str
    doc_id: str
    followup_query_id: str
    gap_s: float
    relatedness: float
    shown: bool  # on the failed search's own page
    click_rank: int
    query_words: FrozenSet[str]  # the failed query's content words


def failed_searches(searches: Iterable[Search], window_s: float, through_failed: bool = True) -> List[FailedSearch]:
    """The failed searches of one user session, in time order (ties by session id: searches arrive in
    any order), each with its follow-up. `through_failed=False` looks at the very next search only, so
    a second failed rewording ends the journey (the issue's naive rule, kept for the benchmark)."""
    ordered = sorted(searches, key=lambda s: (s.time, s.session_id))
    found = []
    for i, search in enumerate(ordered):
        if search.clicks:
            continue
        followup = None
        for later in ordered[i + 1:]:
            if later.time - search.time > window_s:
                break
            if later.clicks:
                followup = later
                break
            if not through_failed:
                break
        found.append(FailedSearch(search, followup))
    return found


def content_words(texts: Sequence[str], stemmer: str) -> List[FrozenSet[str]]:
    """The BM25 analyzer's tokens of each text (lowercased, stopwords out, stemmed), as sets."""
    return [frozenset(tokens) for tokens in analyze(list(texts), stemmer)] if texts else []


def relatedness(a: FrozenSet[str], b: FrozenSet[str]) -> float:
    """Overlap coefficient |A & B| / min(|A|, |B|) of two queries' content words: 1 when one query's words
    are all in the other (a vaguer rewording, a refinement), near 0 for a topic switch."""
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def doc_coverage(query_words: FrozenSet[str], doc_words: FrozenSet[str]) -> float:
    """Share of the query's content words that occur in the document."""
    return len(query_words & doc_words) / len(query_words) if query_words else 0.0


def candidates(found: FailedSearch, stemmer: str) -> List[Candidate]:
    """The candidate pairs of a failed search that has a follow-up and query texts: one per clicked document."""
    failed, followup = found.failed, found.followup
    failed_words, followup_words = content_words([failed.query, followup.query], stemmer)
    related = relatedness(failed_words, followup_words)
    return [Candidate(failed.session_id, failed.query_id, doc_id, followup.query_id, found.gap_s, related,
                      doc_id in failed.impressions, followup.click_rank(doc_id), failed_words)
            for doc_id in sorted(set(followup.clicks))]


def verdict(settings: FailedSearchSettings, related: float, shown: bool, rank: int, coverage: Optional[float]) -> str:
    """KEPT, or the first filter a pair fails (module docstring); `coverage` None: the document is unknown."""
    if related < settings.min_relatedness:
        return UNRELATED
    if shown:
        return SHOWN
    if settings.max_click_rank and rank > settings.max_click_rank:
        return CLICK_RANK
    if coverage is None:
        return UNKNOWN_DOC
    if coverage < settings.min_doc_coverage:
        return DOC_COVERAGE
    return KEPT


def confidence(related: float, coverage: float, rank: int) -> float:
    """relatedness x doc coverage / sqrt(click rank), in [0, 1]: the filters' evidence in one score, so a pair
    that passes them with a margin ranks above one that barely does (the benchmark shows precision by it)."""
    return related * coverage / math.sqrt(rank)


def judge(c: Candidate, doc_words: Optional[FrozenSet[str]], settings: FailedSearchSettings) -> Tuple[str, Optional[Dict[str, Any]]]:
    """The verdict of a candidate pair and, when kept, its positive with provenance and confidence."""
    coverage = None if doc_words is None else doc_coverage(c.query_words, doc_words)
    v = verdict(settings, c.relatedness, c.shown, c.click_rank, coverage)
    if v != KEPT:
        return v, None
    return v, positive(c.doc_id, SOURCE, confidence=confidence(c.relatedness, coverage, c.click_rank),
                       followup_query_id=c.followup_query_id, gap_s=c.gap_s, relatedness=c.relatedness)


class _ByUserSession(beam.DoFn):
    def __init__(self) -> None:
        self.in_session = Metrics.counter(NAMESPACE, "searches_in_user_sessions")
        self.without = Metrics.counter(NAMESPACE, "searches_without_user_session")  # a log without them yields nothing

    def process(self, record: Dict[str, Any]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        if record.get("user_session_id") is None:
            self.without.inc()
            return
        self.in_session.inc()
        yield record["user_session_id"], record


class _FailedSearches(beam.DoFn):
    """One user session's searches -> (doc_id, candidate pair) of each failed search with a follow-up."""

    def __init__(self, settings: FailedSearchSettings) -> None:
        self.settings = settings
        self.found = Metrics.counter(NAMESPACE, "failed_searches")
        self.no_followup = Metrics.counter(NAMESPACE, "failed_without_clicked_followup")
        self.no_text = Metrics.counter(NAMESPACE, "failed_without_query_text")
        self.pairs = Metrics.counter(NAMESPACE, "candidate_pairs")

    def process(self, element: Tuple[str, Iterable[Dict[str, Any]]]) -> Iterator[Tuple[str, Candidate]]:
        _, records = element
        for found in failed_searches([Search.of(r) for r in records], self.settings.window_s):
            self.found.inc()
            if found.followup is None:
                self.no_followup.inc()
            elif not (found.failed.query.strip() and found.followup.query.strip()):
                self.no_text.inc()
            else:
                pairs = candidates(found, self.settings.stemmer)
                self.pairs.inc(len(pairs))
                for c in pairs:
                    yield c.doc_id, c


class _Judge(beam.DoFn):
    """A document's candidate pairs, with the document -> (failed search, (verdict, query id, positive))."""

    def __init__(self, settings: FailedSearchSettings) -> None:
        self.settings = settings
        self.counted = {v: Metrics.counter(NAMESPACE, "pairs_kept" if v == KEPT else f"pairs_rejected_{v}") for v in VERDICTS}

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Tuple[str, Tuple[str, str, Optional[Dict[str, Any]]]]]:
        _, joined = element
        if not joined["pairs"]:
            return
        doc_words = content_words([passage_text(joined["doc"][0])], self.settings.stemmer)[0] if joined["doc"] else None
        for c in joined["pairs"]:
            v, pos = judge(c, doc_words, self.settings)
            self.counted[v].inc()
            yield c.failed_session_id, (v, c.query_id, pos)


class _Outcome(beam.DoFn):
    """A failed search's verdicts -> its outcome (counted) and its kept positives."""

    def __init__(self) -> None:
        self.counted = {o: Metrics.counter(NAMESPACE, f"failed_{o}") for o in OUTCOMES}

    def process(self, element: Tuple[str, Iterable[Tuple[str, str, Optional[Dict[str, Any]]]]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        _, verdicts = element
        verdicts = list(verdicts)
        kept = sorted(((qid, pos) for v, qid, pos in verdicts if v == KEPT), key=lambda kv: kv[1]["doc_id"])
        # the pairs of one failed search share their relatedness, so either all or none are unrelated
        outcome = "with_positive" if kept else "unrelated_followup" if verdicts[0][0] == UNRELATED else "all_clicks_rejected"
        self.counted[outcome].inc()
        yield from kept


class FailedSearchPositives(beam.PTransform):
    """Log records -> (failed query id, `failed_search` positive) over every user session of the log.

    `docs` are the corpus documents (whose words decide doc coverage). Records without a
    user_session_id take no part (counted `searches_without_user_session`).
    """

    def __init__(self, settings: FailedSearchSettings, docs: beam.PCollection) -> None:
        super().__init__()
        self.settings, self.docs = settings, docs

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        pairs = (
            records
            | "ByUserSession" >> beam.ParDo(_ByUserSession())
            | "GroupByUserSession" >> beam.GroupByKey()
            | "FailedSearches" >> beam.ParDo(_FailedSearches(self.settings))
        )
        docs = self.docs | "KeyDocs" >> beam.Map(lambda d: (d["doc_id"], d))
        return (
            {"pairs": pairs, "doc": docs}
            | "JoinDocs" >> beam.CoGroupByKey()
            | "Judge" >> beam.ParDo(_Judge(self.settings))
            | "GroupByFailedSearch" >> beam.GroupByKey()
            | "Outcome" >> beam.ParDo(_Outcome())
        )
