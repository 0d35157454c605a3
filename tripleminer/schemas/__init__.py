"""pyarrow schemas of every input and output, and record validation."""
