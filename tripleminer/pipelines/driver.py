"""One way to run any triples pipeline: parse its option groups, plan its settings, build, run, stats.

A pipeline module describes itself as a `PipelineSpec` (its option groups, per-pipeline defaults,
how options become settings, how settings become transforms) and exposes `run = spec.run`; the
checks of options and inputs all happen while planning and building, before the output folder is
touched, so a refused run never clears an old output, even with --overwrite.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from tripleminer.io.writers import prepare_output, write_stats
from tripleminer.logs import setup_logging
from tripleminer.pipelines.options import Groups, parse_args
from tripleminer.pipelines.stats import summarize

log = logging.getLogger(__name__)

Summarizer = Callable[[PipelineResult, Dict[str, Any], float], Dict[str, Any]]


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its command line, its plan, its wiring, its stats."""

    prog: str  # e.g. "tripleminer mine"
    description: str
    groups: Groups  # option groups, in --help order
    plan: Callable[[PipelineOptions], Any]  # options -> frozen settings (ValueError names the option)
    build: Callable[[beam.Pipeline, Any], None]  # settings -> transforms on the pipeline
    describe: Callable[[Any], str]  # one log line saying what the run does
    defaults: Mapping[str, Any] = field(default_factory=dict)  # per-pipeline option defaults
    summarize: Summarizer = summarize

    def options(self, argv: Optional[List[str]]) -> PipelineOptions:
        return parse_args(self.groups, argv, self.prog, self.description, self.defaults)

    def run(self, argv: Optional[List[str]] = None) -> Dict[str, Any]:
        """Run the pipeline and return its stats (also written to OUTPUT/stats.json)."""
        options = self.options(argv)
        settings = self.plan(options)
        log.info("%s: %s", self.prog, self.describe(settings))
        start = time.perf_counter()
        p = beam.Pipeline(options=options)
        self.build(p, settings)
        out = settings.triples.output
        prepare_output(out.path, out.overwrite)
        result = p.run()
        result.wait_until_finish()
        stats = self.summarize(result, settings.triples.config, time.perf_counter() - start)
        path = write_stats(out.path, stats)
        log.info("wrote %d rows (negatives per source %s) in %.1fs; stats in %s",
                 stats["rows"], stats["negatives_per_source"], stats["wall_time_s"], path)
        return stats

    def main(self, argv: Optional[List[str]] = None) -> int:
        setup_logging()
        self.run(sys.argv[1:] if argv is None else argv)
        return 0
