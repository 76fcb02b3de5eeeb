"""Metrics: one JSON line per step in metrics.jsonl (flushed), optional TensorBoard / W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class MetricsLogger:
    def __init__(self, folder: str | Path, report_to: list[str] | None = None, config: dict | None = None,
                 step_key: str = "iteration", enabled: bool | None = None):
        """`enabled` (default: this is the main process) False: rows are built and returned, nothing written."""
        from .distributed import is_main

        self.path = Path(folder) / "metrics.jsonl"
        self.step_key = step_key
        self.enabled = is_main() if enabled is None else enabled
        self.tb = None
        self.wandb = None
        for sink in (report_to or []) if self.enabled else []:
            if sink == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # needs `pip install tensorboard`

                self.tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            elif sink == "wandb":
                import wandb  # imported only when asked for

                self.wandb = wandb.init(config=config or {}, dir=str(folder))

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (used on resume so the file holds each step once)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get(self.step_key, -1) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {self.step_key: step, **{k: _clean(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != self.step_key:
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
