"""tripleminer: mine (query, positive, negatives) training triples for dense retrievers on Apache Beam."""

__version__ = "0.1.0"
