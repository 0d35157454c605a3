"""Write the pipeline's outputs: Parquet triple shards, dead letters, and the stats JSON.

Shards go through Beam's file sink, which writes to temporary files and renames them on
finalisation, so a failed run never leaves a half-written shard under the final name.
`stats.json` is written last (to a temporary name, then renamed) and removed first when an old
output is replaced: an output folder is complete exactly when it has a `stats.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.schemas.outputs import (
    OUTPUT_FORMATS,
    TRIPLET_SCHEMA,
    flatten_row,
    nested_schema,
    ntuple_schema,
    with_run_metadata,
)

SHARD_PREFIX = "triples"
DEAD_LETTER_PREFIX = "dead_letter"
CE_REPORT_PREFIX = "ce_flagged"  # negatives the cross-encoder dropped as likely relevant
STATS_FILE = "stats.json"


class OutputExistsError(FileExistsError):
    """The output folder already holds shards and the user did not ask to overwrite them."""


def prepare_output(output_dir: str, overwrite: bool) -> None:
    """Refuse to mix a new run's shards with an old run's, or clear the old ones when asked to.

    Files at any depth count, so the `beam-temp-*` folder (with partial shards) that a killed or
    failed run leaves behind is refused, or cleared, like the shards themselves.
    """
    pattern = FileSystems.join(output_dir, "**")
    existing = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list) if FileSystems.exists(output_dir) else []
    if existing and not overwrite:
        raise OutputExistsError(
            f"--output {output_dir} is not empty ({len(existing)} files); pass --overwrite to replace them"
        )
    if existing:
        # stats.json first: a folder whose clearing is interrupted must not look like a complete run.
        stats = [path for path in existing if path.rstrip("/").rsplit("/", 1)[-1] == STATS_FILE]
        for batch in (stats, [path for path in existing if path not in stats]):
            if batch:
                FileSystems.delete(batch)
        if "://" not in output_dir:  # local folders outlive their files; object stores have none
            for root, dirs, files in os.walk(output_dir, topdown=False):
                if root != output_dir and not os.listdir(root):
                    os.rmdir(root)


class WriteTriples(beam.PTransform):
    """Rows (nested) -> `OUTPUT_DIR/triples-SSSSS-of-NNNNN.parquet` in the chosen layout."""

    def __init__(
        self,
        output_dir: str,
        output_format: str,
        config: Mapping[str, Any],
        num_shards: int = 0,
        num_negatives: Optional[int] = None,
        query_clusters: bool = False,  # nested rows carry `query_cluster` (--query_clusters)
    ) -> None:
        super().__init__()
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        self.output_dir, self.output_format, self.num_shards = output_dir, output_format, num_shards
        self.num_negatives = num_negatives
        base = {"nested": nested_schema(query_clusters), "triplet": TRIPLET_SCHEMA}.get(output_format)
        self.schema = with_run_metadata(base or ntuple_schema(num_negatives or 0), config)

    def expand(self, rows: beam.PCollection):
        if self.output_format != "nested":
            rows = rows | "Flatten" >> beam.FlatMap(_flatten, self.output_format, self.num_negatives)
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            FileSystems.join(self.output_dir, SHARD_PREFIX),
            schema=self.schema,
            file_name_suffix=".parquet",
            num_shards=self.num_shards,
            shard_name_template="-SSSSS-of-NNNNN",
            codec="zstd",
        )


def _flatten(row: Dict[str, Any], output_format: str, num_negatives: Optional[int]) -> List[Dict[str, str]]:
    flat = flatten_row(row, output_format, num_negatives)
    if not flat:
        Metrics.counter("rows", f"{output_format}_rows_dropped_too_few_negatives").inc()
    return flat


class WriteDeadLetters(beam.PTransform):
    """Dead letters (or another audit record) -> `OUTPUT_DIR/<prefix>-SSSSS-of-NNNNN.jsonl`, one JSON object a line."""

    def __init__(self, output_dir: str, prefix: str = DEAD_LETTER_PREFIX) -> None:
        super().__init__()
        self.output_dir, self.prefix = output_dir, prefix

    def expand(self, dead: beam.PCollection):
        return (
            dead
            | "ToJson" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True))
            | "WriteJsonl" >> beam.io.WriteToText(
                FileSystems.join(self.output_dir, self.prefix), file_name_suffix=".jsonl", num_shards=1
            )
        )


def write_stats(output_dir: str, stats: Dict[str, Any]) -> str:
    """Write `stats.json` whole or not at all: to a temporary name first, then renamed."""
    path = FileSystems.join(output_dir, STATS_FILE)
    tmp = FileSystems.join(output_dir, f".{STATS_FILE}.tmp")
    with FileSystems.create(tmp) as f:
        f.write(json.dumps(stats, indent=2, sort_keys=True).encode("utf-8"))
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return path
