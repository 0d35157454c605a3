"""How well the bi-encoder agrees with a dataset's training labels: the rank of each judged positive
among the documents NOT judged for its query (1 = no unjudged document scores above it). Prints a table
per dataset; it motivates `tripleminer mine --max_positive_rank` (NFCorpus links documents to questions
through citations, so many judged documents are only indirectly related).

    python benchmarks/positive_ranks.py                       # SciFact (all train pairs) and NFCorpus (the matrix's capped pairs)
    python benchmarks/positive_ranks.py --peer_rows work/quality_matrix/full/nfcorpus/seed13/peer/train.parquet

Pairs: SciFact's 919 judged train pairs; NFCorpus's capped pairs of benchmarks/quality_matrix.py (2 per
query, 3,000 in all, seed 13). Scores: all-MiniLM-L6-v2, max length 256, bf16 autocast where the CPU has
native bf16, exact cosine over the whole corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer

from quality_matrix import cap_pairs
from tripleminer.encoders import default_model
from tripleminer.precision import cpu_native
from tripleminer.trainer.evaluate import Bf16Encoder, default_data_dir, load_qrels, read_corpus, read_queries

Pair = Tuple[str, str]
CUTS = (10, 50, 100)


def positive_ranks(data: Path, pairs: Set[Pair], qrels: Dict[str, Dict[str, int]], model: str) -> Dict[Pair, int]:
    """Each pair's 1 + number of unjudged documents of its query that score above its positive."""
    corpus, queries = read_corpus(data / "corpus.jsonl"), read_queries(data / "queries.jsonl")
    st = SentenceTransformer(model, device="cpu")
    st.max_seq_length = 256
    encoder = Bf16Encoder(st) if cpu_native("bf16") else st
    ids = list(corpus)
    index = {d: i for i, d in enumerate(ids)}
    docs = encoder.encode_document([corpus[d] for d in ids], batch_size=64, convert_to_tensor=True,
                                   normalize_embeddings=True, show_progress_bar=True)
    qids = sorted({q for q, _ in pairs})
    qs = encoder.encode_query([queries[q] for q in qids], batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
    scores = (qs @ docs.T).numpy()
    row = {q: i for i, q in enumerate(qids)}
    out = {}
    for q, d in pairs:
        s = scores[row[q]]
        unjudged = np.ones(len(ids), dtype=bool)
        unjudged[[index[x] for x in qrels[q] if x in index]] = False
        out[(q, d)] = int((s[unjudged] > s[index[d]]).sum()) + 1
    return out


def summary(name: str, ranks: List[int]) -> str:
    r = np.asarray(ranks)
    shares = " | ".join(f"{(r <= c).mean():.3f}" for c in CUTS)
    return f"| {name} | {len(r)} | {np.median(r):.0f} | {shares} |"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="folder of the BEIR datasets (default: $TRIPLEMINER_DATA)")
    parser.add_argument("--model", default=None, help="bi-encoder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--peer_rows", default=None, help="nested rows of the NFCorpus peer cell: also summarise the pairs it kept")
    args = parser.parse_args(argv)
    root = Path(args.data_dir) if args.data_dir else default_data_dir()
    print("| pairs | n | median rank among unjudged | " + " | ".join(f"share <= {c}" for c in CUTS) + " |")
    print("|---|---:|---:|" + "---:|" * len(CUTS))
    for name, capped in (("scifact", False), ("nfcorpus", True)):
        qrels = load_qrels(root / name / "qrels" / "train.tsv")
        pairs = cap_pairs(qrels, 2, 3000, 13) if capped else {(q, d) for q, docs in qrels.items() for d in docs}
        ranks = positive_ranks(root / name, pairs, qrels, args.model or default_model())
        print(summary(f"{name} train{' (capped: 2 a query, 3,000)' if capped else ''}", list(ranks.values())), flush=True)
        if capped and args.peer_rows:
            kept = pq.read_table(args.peer_rows, columns=["query_id", "positive"]).to_pylist()
            print(summary("nfcorpus, the peer's kept rows", [ranks[(r["query_id"], r["positive"]["doc_id"])] for r in kept]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
