"""Logging for the command-line tools: our INFO progress, Beam's warnings only.

`force=True` because importing Apache Beam already logs a warning, which installs a WARNING-level
root handler that would otherwise swallow every progress line.
"""

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    logging.getLogger("apache_beam").setLevel(max(level, logging.WARNING))
