"""`tripleminer <command> [options]`: one entry point for the pipelines and the trainer.

Each command's own `--help` lists its options.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional, Tuple

# command -> (module, function taking argv and returning an exit code, one-line summary)
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "mine": ("tripleminer.pipelines.mine", "main", "query log / qrels + corpus -> Parquet training triples (Beam)"),
    "pretext": ("tripleminer.pipelines.pretext", "main", "bare corpus -> self-supervised Parquet training triples (ICT, crop, span; Beam)"),
    "report": ("tripleminer.report", "main", "HTML page with plots of a mining run's output"),
    "audit": ("tripleminer.audit", "main", "false-negative rate left in a run, from its labelled --audit_sample (Wilson intervals)"),
    "train": ("tripleminer.trainer.cli", "train_main", "fine-tune a dual encoder on triple shards (torchrun for several ranks)"),
    "evaluate": ("tripleminer.trainer.cli", "evaluate_main", "nDCG@10, Recall@100, MRR@10 of a model on a BEIR split"),
    "train-cross-encoder": ("tripleminer.rerank.train", "main", "fine-tune a cross-encoder on nested triples (for --cross_encoder)"),
    "remine": ("tripleminer.pipelines.remine", "main", "ANCE-style rounds: mine -> train -> mine again with the new model"),
}


def usage() -> str:
    lines = ["usage: tripleminer <command> [options]", "", "commands:"]
    lines += [f"  {name:<22}{summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Run `tripleminer <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] not in COMMANDS:
        print(f"tripleminer: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[args[0]]
    return int(getattr(importlib.import_module(module), function)(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
