"""Does Beam's RunInference cost embedding throughput? In one process, on N SciFact abstracts:

(a) `Encoder.encode` on all texts directly (model.encode, one call);
(b) the embedding stage through the RunInference path (`EmbedWithCache` -> `CachedCompute` ->
    `RunInference(KeyedModelHandler(EncoderModelHandler))`) in a DirectRunner pipeline;
(c) the hand-written DoFn path it replaced (a `BatchCompute` DoFn loading the model through
    `apache_beam.utils.shared`, fed by BatchElements; copied below from the last commit that had it).

(b) and (c) start from a fresh work dir each (nothing cached) and use the same batching
(`--batch`..`--max_batch` texts per `encode` call, `--batch` texts per forward pass). Their texts/s
are given from the embedding busy time (`time/embed_doc_ms`) and from the whole pipeline's wall
time (model load, cache join and cache writes included). Vectors of (b) and (c) are read back from
the cache files and compared with (a)'s. With `--repeats`, the paths run interleaved and each
row shows its best run (the machine is shared; the best run is the least disturbed one).

    HF_HUB_OFFLINE=1 python benchmarks/embed_runinference.py [--docs 400] [--repeats 1] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Hashable, Iterator, List, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.utils import shared  # noqa: E402

from tripleminer.encoders import Encoder, EncoderSettings, default_model  # noqa: E402
from tripleminer.pipelines.stats import counters  # noqa: E402
from tripleminer.schemas.outputs import passage_text  # noqa: E402
from tripleminer.transforms.cache import CACHE, MISS, VECTORS, CacheFormat, _cache_files  # noqa: E402
from tripleminer.transforms.common import Progress, timed  # noqa: E402
from tripleminer.transforms.embed import EmbedWithCache, text_key  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ (c) the old hand-written DoFn path
# Copied from tripleminer/transforms/{cache,embed}.py at 7bc6046 (before RunInference), unchanged
# but for the names.

class OldBatchCompute(beam.DoFn):
    def __init__(self, cache_format: CacheFormat) -> None:
        self.cache_format = cache_format

    def compute(self, payloads: List[Any]) -> Sequence[Any]:
        raise NotImplementedError

    def process(self, batch: List[Tuple[str, List[Tuple[Hashable, Any]]]]) -> Iterator[Any]:
        values = self.compute([items[0][1] for _, items in batch])
        yield beam.pvalue.TaggedOutput(CACHE, self.cache_format.to_table([key for key, _ in batch], values))
        for (_, items), value in zip(batch, values):
            for item_id in dict.fromkeys(item_id for item_id, _ in items):
                yield item_id, value


class OldEncode(OldBatchCompute):
    def __init__(self, settings: EncoderSettings, role: str) -> None:
        super().__init__(VECTORS)
        self.settings, self.role = settings, role
        self.texts = Metrics.counter("embed", f"{role}_texts_embedded")
        self._shared = shared.Shared()

    def setup(self) -> None:
        self.encoder = self._shared.acquire(lambda: Encoder(self.settings), tag=self.settings.key())
        self.progress = Progress(f"embed {self.role}s", "texts")

    def compute(self, texts: List[str]) -> np.ndarray:
        with timed(f"embed_{self.role}"):
            vectors = self.encoder.encode(texts)
        self.texts.inc(len(texts))
        self.progress.add(len(texts))
        return vectors


class OldSplitHits(beam.DoFn):
    def __init__(self, namespace: str, hits_counter: str) -> None:
        self.hits = Metrics.counter(namespace, hits_counter)

    def process(self, element):
        key, joined = element
        if not joined["items"]:
            return
        if joined["cached"]:
            ids = list(dict.fromkeys(item_id for item_id, _ in joined["items"]))
            self.hits.inc(len(ids))
            for item_id in ids:
                yield item_id, joined["cached"][0]
        else:
            yield beam.pvalue.TaggedOutput(MISS, (key, joined["items"]))


class OldCachedCompute(beam.PTransform):
    def __init__(self, cache_dir, prefix, key_of, compute_fn, min_batch_size, max_batch_size, namespace, hits_counter):
        super().__init__()
        self.cache_dir, self.prefix, self.key_of, self.compute_fn = cache_dir, prefix, key_of, compute_fn
        self.min_batch_size, self.max_batch_size = min_batch_size, max_batch_size
        self.namespace, self.hits_counter = namespace, hits_counter

    def expand(self, items):
        files = _cache_files(self.cache_dir, self.prefix)
        key_of, cache_format = self.key_of, self.compute_fn.cache_format
        cached = (
            items.pipeline | "CacheFiles" >> beam.Create(files)
            | "ReadCache" >> beam.io.ReadAllFromParquetBatched()
            | "KeyCached" >> beam.FlatMap(cache_format.from_table)
        )
        keyed = items | "KeyByContent" >> beam.Map(lambda it: (key_of(it[1]), it))
        split = (
            {"items": keyed, "cached": cached}
            | "JoinCache" >> beam.CoGroupByKey()
            | "SplitHits" >> beam.ParDo(OldSplitHits(self.namespace, self.hits_counter)).with_outputs(MISS, main="hits")
        )
        computed = (
            split[MISS]
            | "Batch" >> beam.BatchElements(min_batch_size=self.min_batch_size, max_batch_size=self.max_batch_size)
            | "Compute" >> beam.ParDo(self.compute_fn).with_outputs(CACHE, main="values")
        )
        computed[CACHE] | "WriteCache" >> beam.io.WriteToParquetBatched(
            FileSystems.join(self.cache_dir, f"{self.prefix}-old"), schema=cache_format.schema, file_name_suffix=".parquet",
        )
        return (split.hits, computed.values) | "AllValues" >> beam.Flatten()


class OldEmbedWithCache(beam.PTransform):
    def __init__(self, settings: EncoderSettings, role: str, work_dir: str, min_batch_size: int = 32, max_batch_size: int = 512) -> None:
        super().__init__()
        self.settings, self.role = settings, role
        self.cache_dir = FileSystems.join(work_dir, "embeddings", settings.key())
        self.min_batch_size, self.max_batch_size = min_batch_size, max_batch_size

    def expand(self, items):
        role = self.role
        return items | "Cached" >> OldCachedCompute(
            self.cache_dir, role, lambda text: text_key(role, text), OldEncode(self.settings, role),
            self.min_batch_size, self.max_batch_size, "embed", f"{role}_cache_hits",
        )


# ------------------------------------------------------------------ measurements

def run_direct(encoder: Encoder, texts: List[str]) -> Dict[str, Any]:
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    return {"busy_s": time.perf_counter() - start, "vectors": vectors}


def run_pipeline(transform_cls, settings: EncoderSettings, texts: List[str], args) -> Dict[str, Any]:
    """One DirectRunner pipeline embedding `texts` into a fresh work dir; its busy and wall time."""
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as work:
        items = [(f"d{i}", t) for i, t in enumerate(texts)]
        start = time.perf_counter()
        p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
        (
            p | beam.Create(items)
            | transform_cls(settings, "doc", work, min_batch_size=args.batch, max_batch_size=args.max_batch)
            | beam.combiners.Count.Globally()
        )
        result = p.run()
        result.wait_until_finish()
        wall = time.perf_counter() - start
        c = counters(result)
        cached = {}
        for f in Path(work).glob("embeddings/*/doc-*.parquet"):
            cached.update(VECTORS.from_table(pq.read_table(f)))
    assert c["embed"]["doc_texts_embedded"] == len(set(texts)), c["embed"]
    dists = {d.key.metric.name: (d.committed or d.attempted) for d in result.metrics().query()["distributions"]}
    batches = dists.get("inference_request_batch_size")
    load = dists.get("load_model_latency_milli_secs")
    return {
        "busy_s": c["time"]["embed_doc_ms"] / 1000, "wall_s": wall, "cached": cached,
        "batches": None if batches is None else f"{batches.count} batches, {batches.min}-{batches.max} texts",
        "load_ms": None if load is None else load.sum,
        "runinference": c.get("RunInference_embed_doc", {}),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--docs", type=int, default=400, help="SciFact abstracts to embed")
    ap.add_argument("--max_seq_length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="texts per forward pass, and the pipeline's min batch size")
    ap.add_argument("--max_batch", type=int, default=512, help="the pipeline's max texts per encode call")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs of every path; each row shows its best")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    with open(Path(args.data) / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        texts = [passage_text(json.loads(line)) for _, line in zip(range(args.docs), f)]
    settings = EncoderSettings(default_model(), max_seq_length=args.max_seq_length, encode_batch_size=args.batch)
    encoder = Encoder(settings)
    encoder.encode(texts[:8])  # warm-up (the pipelines load their models untimed in the busy time too)

    runs: Dict[str, List[Dict[str, Any]]] = {"direct": [], "runinference": [], "dofn": []}
    for r in range(args.repeats):
        runs["direct"].append(run_direct(encoder, texts))
        runs["runinference"].append(run_pipeline(EmbedWithCache, settings, texts, args))
        runs["dofn"].append(run_pipeline(OldEmbedWithCache, settings, texts, args))
        print(f"run {r + 1}: " + ", ".join(f"{k} busy {v[-1]['busy_s']:.1f}s" + (f" wall {v[-1]['wall_s']:.1f}s" if "wall_s" in v[-1] else "")
                                          for k, v in runs.items()), flush=True)

    n = len(texts)
    best = {k: min(v, key=lambda x: x["busy_s"]) for k, v in runs.items()}
    base = n / best["direct"]["busy_s"]
    reference = best["direct"]["vectors"]
    keys = [text_key("doc", t) for t in texts]

    def diff(path: str) -> float:
        cached = best[path]["cached"]
        return float(np.max(np.abs(np.stack([cached[k] for k in keys]) - reference)))

    rows = [("(a) `Encoder.encode` (model.encode, one call)", base, "-")]
    for path, label in (("runinference", "(b) RunInference (`EncoderModelHandler`)"), ("dofn", "(c) hand-written DoFn (old `_Encode`)")):
        b = best[path]
        rows.append((f"{label}, embedding busy time", n / b["busy_s"], f"{diff(path):.2e}"))
        wall = min(x["wall_s"] for x in runs[path])
        rows.append((f"{label}, whole pipeline wall", n / wall, ""))
    print(f"\n{n} SciFact abstracts, max_seq_length {args.max_seq_length}, {args.batch} texts per forward pass, "
          f"pipeline batches {args.batch}..{args.max_batch}, best of {args.repeats}\n")
    print("| path | texts/s | ratio to model.encode | max abs diff vs model.encode |")
    print("|---|---:|---:|---:|")
    for label, rate, d in rows:
        print(f"| {label} | {rate:.1f} | {rate / base:.3f} | {d} |")
    ri, old = best["runinference"], best["dofn"]
    print(f"\nRunInference vs hand-written DoFn, busy time: {old['busy_s'] / ri['busy_s']:.3f}x throughput; "
          f"wall: {min(x['wall_s'] for x in runs['dofn']) / min(x['wall_s'] for x in runs['runinference']):.3f}x")
    print(f"RunInference batches: {ri['batches']}; model load {ri['load_ms']} ms; its counters {ri['runinference']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "texts": n, "args": vars(args),
            "runs": {k: [{m: x[m] for m in ("busy_s", "wall_s") if m in x} for x in v] for k, v in runs.items()},
            "max_abs_diff": {p: diff(p) for p in ("runinference", "dofn")},
        }, indent=2))


if __name__ == "__main__":
    main()
