"""Dataset I/O: JSONL readers that name file, line and field on bad input."""
