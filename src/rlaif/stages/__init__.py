"""One module per stage: a config dataclass and a `train()` function."""
