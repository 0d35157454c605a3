"""Entry points for the `tripleminer train` and `tripleminer evaluate` subcommands.

Imports are deferred so that `tripleminer --help` does not load torch.
"""

from __future__ import annotations

from typing import List, Optional


def train_main(argv: Optional[List[str]] = None) -> int:
    """`tripleminer train [OPTIONS]`; launch with torchrun for several ranks."""
    from tripleminer.trainer.train import main

    return main(argv)


def evaluate_main(argv: Optional[List[str]] = None) -> int:
    """`tripleminer evaluate [OPTIONS]`."""
    from tripleminer.trainer.evaluate import main

    return main(argv)
