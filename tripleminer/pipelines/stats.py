"""Turn a finished pipeline's Beam metrics into the stats JSON written beside the shards."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict

from apache_beam.runners.runner import PipelineResult

from tripleminer.transforms.crossencoder import false_negative_rates
from tripleminer.transforms.query_clusters import NAMESPACE as CLUSTERS, cluster_stats


def counters(result: PipelineResult) -> Dict[str, Dict[str, int]]:
    """Counters by namespace and name, summed over steps (committed where the runner has them)."""
    out: Dict[str, Dict[str, int]] = defaultdict(dict)
    for c in result.metrics().query()["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        ns, name = c.key.metric.namespace, c.key.metric.name
        out[ns][name] = out[ns].get(name, 0) + int(value or 0)
    return {ns: dict(sorted(names.items())) for ns, names in sorted(out.items())}


def summarize(result: PipelineResult, config: Dict[str, Any], wall_time_s: float) -> Dict[str, Any]:
    """The stats of a run: every counter, plus the headline numbers a user looks for first."""
    c = counters(result)
    rows = c.get("rows", {})
    return {
        "config": config,
        "wall_time_s": round(wall_time_s, 2),
        "rows": rows.get("rows", 0),
        "negatives_per_source": c.get("negatives", {}),
        "queries_with_positive": c.get("queries", {}).get("with_positive", 0),
        "queries_without_positive": c.get("queries", {}).get("without_positive", 0),
        "rows_with_fewer_negatives_than_asked": rows.get("rows_with_fewer_negatives_than_asked", 0),
        "dead_letters": c.get("dead_letter", {}),
        "busy_time_ms_per_stage": c.get("time", {}),
        "false_negative_rate_per_source": false_negative_rates(c.get("crossencoder", {})),
        **cluster_stats(config.get("query_clusters", 0), c.get(CLUSTERS, {})),  # only with --query_clusters
        "counters": c,
    }
