"""Search indices (no Beam here): built and queried by the retrieval transforms."""
