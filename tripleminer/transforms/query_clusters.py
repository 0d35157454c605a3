"""Topic clusters of the queries (TAS-Balanced): k-means over the bi-encoder's query vectors, and the
cluster id of every nested row as its `query_cluster` column, for `tripleminer train --batch_by_cluster`.

    query vectors -> training sample (at most K x 256, by a seeded hash of the query id)
                  -> k-means (FAISS, one worker) -> K centroids (side input)
                  -> each query's nearest centroid -> joined onto its rows by query id

K-means trains in one place, on one list of vectors: `mine`'s queries are far fewer than its
documents, and FAISS trains on at most 256 points a centroid anyway, so the sample is capped at
K x 256 vectors (K x 256 x dim x 4 bytes: 39 MB for K = 100 at MiniLM's 384 dimensions). The cap is
taken by a combiner (`Top`), so no worker ever holds every query, which matters for `pretext`, whose
pairs outnumber the documents. Which queries are sampled, their order and FAISS's seed all derive
from `--seed`, so equal vectors give equal clusters on any runner and parallelism. Assignment
(nearest centroid by inner product, the cosine of unit vectors) is parallel.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.metrics.metricbase import Counter

from tripleminer.schemas.outputs import CLUSTER_COLUMN
from tripleminer.seeding import stable_seed
from tripleminer.transforms.candidates import CandidateInputs

NAMESPACE = "query_clusters"
POINTS_PER_CENTROID = 256  # FAISS's max_points_per_centroid: it would subsample a larger training set itself
KMEANS_ITERATIONS = 25  # FAISS's default

Vector = Tuple[str, np.ndarray]  # (query_id, float32 unit vector)


def query_vectors(inputs: CandidateInputs) -> beam.PCollection:
    """(query_id, vector) of every record: the ones a dense source embeds, or the queries alone through
    the same cached embedding (no document is embedded for clustering)."""
    return inputs.query_vectors()


def sample_key(seed: int, query_id: str) -> Tuple[int, str]:
    """Order of the training sample: a seeded hash, ties broken by the id, so the sample is a total order."""
    return stable_seed(seed, NAMESPACE, query_id), query_id


def train_centroids(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K unit centroids of spherical k-means (topics by cosine) over unit `vectors`, with FAISS.

    Fewer vectors than clusters is an error rather than a smaller K: a clamped K would silently
    change the topic size the trainer batches by, and a rerun with a smaller --query_clusters
    embeds nothing (the vectors are cached).
    """
    import faiss  # heavy; imported where the one training call runs

    if len(vectors) < k:
        raise ValueError(f"--query_clusters {k}: only {len(vectors)} queries to cluster; choose at most {len(vectors)}")
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=KMEANS_ITERATIONS, seed=stable_seed(seed, NAMESPACE) % 2**31,
                          spherical=True, max_points_per_centroid=POINTS_PER_CENTROID, verbose=False)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.centroids


class _Train(beam.DoFn):
    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed
        self.clusters = Metrics.counter(NAMESPACE, "clusters")
        self.training = Metrics.counter(NAMESPACE, "training_queries")

    def process(self, sample: List[Vector]) -> Iterator[np.ndarray]:
        ordered = sorted(sample, key=lambda qv: sample_key(self.seed, qv[0]))  # independent of how Top merged
        centroids = train_centroids(np.array([v for _, v in ordered], dtype=np.float32), self.k, self.seed)
        self.clusters.inc(self.k)
        self.training.inc(len(ordered))
        yield centroids


class _Assign(beam.DoFn):
    def __init__(self) -> None:
        self.assigned = Metrics.counter(NAMESPACE, "queries_assigned")
        self.sizes: Dict[int, Counter] = {}

    def process(self, element: Vector, centroids: np.ndarray) -> Iterator[Tuple[str, int]]:
        query_id, vector = element
        cluster = int(np.argmax(centroids @ vector))  # ties: the lowest id
        self.assigned.inc()
        _size_counter(self.sizes, "queries", cluster).inc()
        yield query_id, cluster


def _size_counter(cache: Dict[int, Counter], what: str, cluster: int) -> Counter:
    """The counter `<what>_in_<cluster>`, made once per DoFn instance."""
    if cluster not in cache:
        cache[cluster] = Metrics.counter(NAMESPACE, f"{what}_in_{cluster}")
    return cache[cluster]


class ClusterQueries(beam.PTransform):
    """(query_id, unit vector) -> (query_id, cluster id in [0, k)), deterministic given `seed`.

    Counts `query_clusters/clusters` (K), `training_queries`, `queries_assigned` and `queries_in_<c>`.
    """

    def __init__(self, k: int, seed: int) -> None:
        super().__init__()
        self.k, self.seed = k, seed

    def expand(self, vectors: beam.PCollection) -> beam.PCollection:
        seed = self.seed
        centroids = (
            vectors
            | "TrainingSample" >> beam.combiners.Top.Of(self.k * POINTS_PER_CENTROID, key=lambda qv: sample_key(seed, qv[0]),
                                                        reverse=True)
            | "KMeans" >> beam.ParDo(_Train(self.k, seed))
        )
        return vectors | "Assign" >> beam.ParDo(_Assign(), beam.pvalue.AsSingleton(centroids))


class _Attach(beam.DoFn):
    def __init__(self) -> None:
        self.sizes: Dict[int, Counter] = {}

    def process(self, element: Tuple[str, Mapping[str, Sequence[Any]]]) -> Iterator[Dict[str, Any]]:
        query_id, joined = element
        if not joined["rows"]:
            return
        if len(joined["cluster"]) != 1:  # every row's query was clustered: a miss is a wiring bug, never a data error
            raise ValueError(f"query {query_id!r} has {len(joined['cluster'])} cluster ids, expected 1")
        cluster = joined["cluster"][0]
        for row in joined["rows"]:
            _size_counter(self.sizes, "rows", cluster).inc()
            yield {**row, CLUSTER_COLUMN: cluster}


class AttachClusters(beam.PTransform):
    """Nested rows -> the same rows with `query_cluster`, their query's cluster id (counted as `rows_in_<c>`)."""

    def __init__(self, clusters: beam.PCollection) -> None:
        super().__init__()
        self.clusters = clusters  # (query_id, cluster id), from ClusterQueries

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            {"rows": rows | "KeyByQuery" >> beam.Map(lambda r: (r["query_id"], r)), "cluster": self.clusters}
            | "JoinClusters" >> beam.CoGroupByKey()
            | "Attach" >> beam.ParDo(_Attach())
        )


def cluster_stats(k: int, counters: Mapping[str, int]) -> Dict[str, Dict[str, Any]]:
    """`{"query_clusters": {k, training_queries, queries_per_cluster, rows_per_cluster}}` for stats.json,
    the sizes listed by cluster id so the balance shows at a glance; {} when clustering is off.

    `counters` is the `query_clusters` namespace of a run's counters.
    """
    if not k:
        return {}
    sizes = {what: [counters.get(f"{what}_in_{c}", 0) for c in range(k)] for what in ("queries", "rows")}
    return {NAMESPACE: {"k": k, "training_queries": counters.get("training_queries", 0),
                        "queries_per_cluster": sizes["queries"], "rows_per_cluster": sizes["rows"]}}
