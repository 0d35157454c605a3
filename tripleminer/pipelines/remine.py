"""`tripleminer remine`: ANCE-style refresh of hard negatives, mine -> train -> mine again, N rounds.

Round r mines with the model trained in round r-1 (round 0 with `--model` from the mine options, or
the shipped MiniLM), then trains on its own triples starting from that model:

    OUT/round-0/triples-*.parquet, OUT/round-0/model/
    OUT/round-1/triples-*.parquet (mined with round-0/model), OUT/round-1/model/ ...

Usage: tripleminer remine --rounds 2 --out runs/ance [--train_args "..."] -- MINE OPTIONS
(everything after `--` goes to `tripleminer mine`, except --output and --model, which remine sets
per round; a --model there is the starting model). The embedding cache under --work_dir is keyed
by model, so each round embeds the corpus with its own model and later runs of a round reuse it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Any, Dict, List, Optional

from tripleminer.logs import setup_logging


def _pop_option(argv: List[str], name: str) -> Optional[str]:
    """Remove `--name VALUE` / `--name=VALUE` from argv; return VALUE (the last one given)."""
    value, out, i = None, [], 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith(name + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            out.append(argv[i])
            i += 1
    argv[:] = out
    return value


def run(rounds: int, out: str, mine_argv: List[str], train_argv: List[str]) -> List[Dict[str, Any]]:
    """Run the rounds; returns each round's mine stats with the trained model's path added."""
    from tripleminer.pipelines import mine
    from tripleminer.trainer.cli import train_main

    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    mine_argv = list(mine_argv)
    if _pop_option(mine_argv, "--output") is not None:
        logging.getLogger(__name__).warning("remine sets --output per round; the given one is ignored")
    model = _pop_option(mine_argv, "--model")
    for flag in ("--model_name_or_path", "--triples", "--output_dir"):
        if flag in train_argv:
            raise ValueError(f"remine sets {flag} per round; leave it out of --train_args")
    history = []
    for r in range(rounds):
        round_dir = os.path.join(out, f"round-{r}")
        model_args = ["--model", model] if model else []
        stats = mine.run(mine_argv + model_args + ["--output", round_dir, "--overwrite"])
        trained = os.path.join(round_dir, "model")
        start_from = ["--model_name_or_path", model] if model else []
        code = train_main(start_from + ["--triples", os.path.join(round_dir, "triples-*.parquet"),
                                        "--output_dir", trained] + train_argv)
        if code:
            raise RuntimeError(f"round {r}: training failed with exit code {code}")
        history.append({"round": r, "mined_with": model or "default", "model": trained, "rows": stats["rows"],
                        "negatives_per_source": stats["negatives_per_source"]})
        model = trained
    return history


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    mine_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="tripleminer remine", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="mine+train rounds")
    parser.add_argument("--out", required=True, help="folder for round-<r>/ triples and models")
    parser.add_argument("--train_args", default="", help="options for `tripleminer train`, one quoted string, e.g. \"--num_epochs 1 --negatives ann:1\"")
    args = parser.parse_args(own)
    for entry in run(args.rounds, args.out, mine_argv, shlex.split(args.train_args)):
        logging.info("round %d: %d rows mined with %s -> %s", entry["round"], entry["rows"], entry["mined_with"], entry["model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
