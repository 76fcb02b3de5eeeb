"""The run report: one self-contained HTML page (inline CSS and SVG plots, no script, nothing fetched) plus
`summary.json` with the headline figures, written from a pipeline run folder (`rlaif report RUN_DIR`).

Every stage is optional: a stage that did not run shows "not run"; an unreadable file is listed on the page.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .html import render_page
from .load import RunData, load_run
from .summary import build_summary


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` and `summary.json` (default: into `run_dir`); returns the HTML path.

    `out`: a folder, or a path ending in .html (summary.json goes next to it).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    out = Path(out) if out is not None else run_dir
    html_path = out if out.suffix.lower() in (".html", ".htm") else out / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    data = load_run(run_dir)
    summary = build_summary(data)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    page = render_page(data, summary, generated)
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    (html_path.parent / "summary.json").write_text(json.dumps({**summary, "report": str(html_path),
                                                               "generated": generated}, indent=1),
                                                   encoding="utf-8")
    return html_path


__all__ = ["write_report", "load_run", "build_summary", "RunData"]
