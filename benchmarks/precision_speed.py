"""Bi-encoder speed and fidelity by compute precision, in one process: `Encoder.encode` texts/s at
fp32 and at `--precision auto` (bf16 on a CPU with native bf16), cosine of each vector to its fp32
twin, and how much padding the length sort leaves for a given size of the batch one encode call gets.

    python benchmarks/precision_speed.py [--data ../shared/data] [--docs 400] [--max_seq_length 256] [--batch 32]

Prints markdown tables. Throughput is one warm encode call over all the texts (as one RunInference
batch of `--embed_max_batch_size` texts would be), best of `--repeats` alternating runs; texts per
CPU-second beside it is less sensitive to other processes on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def texts_of(data: Path, n: int) -> list:
    from tripleminer.schemas.outputs import passage_text

    with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        return [passage_text(json.loads(line)) for _, line in zip(range(n), f)]


def padding(token_lengths: list, char_lengths: list, call_size: int, batch: int) -> float:
    """Pad tokens per real token when encode calls get `call_size` texts each (in input order) and
    sort them by character length, longest first, before cutting forward batches of `batch`, as
    sentence-transformers' `encode` does across one call."""
    padded = real = 0
    for start in range(0, len(token_lengths), call_size):
        tokens = np.asarray(token_lengths[start:start + call_size])
        order = np.argsort([-c for c in char_lengths[start:start + call_size]])
        for b in range(0, len(order), batch):
            chunk = tokens[order[b:b + batch]]
            padded += len(chunk) * int(chunk.max())
            real += int(chunk.sum())
    return (padded - real) / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="texts per forward pass (--encode_batch_size)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import torch

    from tripleminer.encoders import Encoder, EncoderSettings, default_model

    texts = texts_of(Path(args.data), args.docs)
    asked = ("fp32", "auto")
    encoders = {}
    for name in asked:
        settings = EncoderSettings(default_model(), max_seq_length=args.max_seq_length, device="cpu",
                                   encode_batch_size=args.batch, precision=name)
        encoders[name] = Encoder(settings)
        encoders[name].encode(texts[:args.batch])  # warm-up (oneDNN picks its kernels on the first calls)
    wall = {name: float("inf") for name in asked}
    cpu = dict(wall)
    vectors = {}
    for _ in range(args.repeats):  # alternating, so a neighbour's load hits both alike
        for name in asked:
            start, start_cpu = time.perf_counter(), time.process_time()
            vectors[name] = encoders[name].encode(texts)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)

    print(f"{len(texts)} SciFact abstracts, max length {args.max_seq_length}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16 on this CPU: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, best of {args.repeats}\n")
    print("| encode | resolved | cache key | texts/s | speed-up | texts per CPU-s | cosine to fp32 (mean / min) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in asked:
        settings = encoders[name].settings
        cos = np.sum(vectors[name] * vectors["fp32"], axis=1)
        rate = len(texts) / wall[name]
        print(f"| `--precision {name}` | {settings.precision} | `{settings.key()}` | {rate:.1f} | {wall['fp32'] / wall[name]:.2f}x | "
              f"{len(texts) / cpu[name]:.1f} | {cos.mean():.6f} / {cos.min():.6f} |")
    encoder = encoders["auto"]
    norms = np.linalg.norm(vectors["auto"], axis=1)
    print(f"\n{encoder.settings.precision} vectors: dtype {vectors['auto'].dtype}, |norm - 1| <= {np.abs(norms - 1).max():.1e}")

    tokenizer = encoder.model.tokenizer
    token_lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_seq_length)["input_ids"]]
    chars = [len(t) for t in texts]
    print(f"\nPadding ({sum(token_lengths)} real tokens, forward batches of {args.batch}; sentence-transformers' encode sorts "
          f"all texts of one call by character length):\n")
    print("| texts per encode call | pad tokens per real token |")
    print("|---:|---:|")
    for call in (args.batch, 512):
        print(f"| {call} | {padding(token_lengths, chars, call, args.batch):.3f} |")
    ideal = np.sort(token_lengths)[::-1]
    ideal_pad = sum(len(c) * c.max() - c.sum() for c in (ideal[b:b + args.batch] for b in range(0, len(ideal), args.batch)))
    print(f"| {len(texts)}, sorted by token count | {ideal_pad / sum(token_lengths):.3f} |")


if __name__ == "__main__":
    main()
