"""Result tables: Markdown, CSV and JSON side by side, plus a bar chart PNG (all written atomically).

The paper's numbers (EDTN, arXiv 2310.10073, Table 1 at 256² and the loss ablation) are kept here
so every table prints them next to ours, with a note on what is comparable: FID is (same
real-set definition aside, see the README), KDR is not (the paper's KDR definition is not
published; ours is documented in :mod:`.metrics`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from infra.files import atomic_path

__all__ = [
    "Column",
    "TABLE1_COLUMNS",
    "ABLATION_COLUMNS",
    "PAPER_TABLE1",
    "PAPER_ABLATION_KDR",
    "format_value",
    "markdown_table",
    "write_table",
]


@dataclass(frozen=True)
class Column:
    """A table column: row key, header, number format, and whether it is charted."""

    key: str
    header: str
    fmt: str = ".4f"
    chart: bool = True


TABLE1_COLUMNS = (
    Column("method", "Method", "s", False),
    Column("fid", "FID ↓", ".2f"),
    Column("kdr", "KDR ↓", ".4f"),
    Column("vertex_rmse_mm", "Vertex RMSE (mm) ↓", ".3f"),
    Column("landmark", "Landmark ↓", ".4f"),
    Column("eye", "Eye ↓", ".4f"),
    Column("lip", "Lip ↓", ".4f"),
    Column("frames", "Frames", "d", False),
)
ABLATION_COLUMNS = (TABLE1_COLUMNS[:1] + tuple(c for c in TABLE1_COLUMNS[1:] if c.key != "fid")[:-1]
                    + (Column("paper_kdr", "Paper KDR", ".4f", False), TABLE1_COLUMNS[-1]))

# EDTN paper, Table 1 (256²): FID / KDR ("–": not reported).
PAPER_TABLE1 = {"FOMM": (100.95, None), "PIRenderer+T": (49.55, None), "Animo": (28.69, 0.466),
                "EDTN": (23.15, 0.236)}
# EDTN paper, loss ablation: KDR per training loss.
PAPER_ABLATION_KDR = {"vertex": 0.2431, "landmark": 0.2394, "vertex+landmark": 0.2390, "all": 0.2360}


def format_value(value, fmt: str) -> str:
    """A cell: ``–`` for missing / NaN, else ``format(value, fmt)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A GitHub Markdown table of ``rows`` (dicts keyed by :attr:`Column.key`)."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---" if c.fmt == "s" else "---:" for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c.key), c.fmt) for c in columns) + " |")
    return "\n".join(lines)


def _bar_chart(rows: Sequence[dict], columns: Sequence[Column], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charted = [c for c in columns if c.chart and any(_number(r.get(c.key)) for r in rows)]
    names = [str(r.get("method", k)) for k, r in enumerate(rows)]
    fig, axes = plt.subplots(1, max(len(charted), 1), figsize=(3.2 * max(len(charted), 1), 3.4), squeeze=False)
    for ax, column in zip(axes[0], charted):
        values = [r.get(column.key) if _number(r.get(column.key)) else 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{k % 10}" for k in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(column.header, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    if not charted:
        axes[0][0].set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def write_table(rows: Sequence[dict], columns: Sequence[Column], out_prefix: str | os.PathLike, *,
                title: str, notes: Sequence[str] = (), paper: Optional[dict] = None,
                extra: Optional[dict] = None) -> list[Path]:
    """Write ``<out_prefix>.md``, ``.csv``, ``.json`` and ``.png`` (bar chart).

    Args:
        rows: one dict per method (keys of ``columns``; missing = ``–``).
        columns: the table's columns. title: the Markdown heading and chart title.
        notes: paragraphs under the table (comparability, definitions, settings).
        paper: the paper's numbers, ``{"columns": [Column...], "rows": [dict...]}``, printed as a
            second table in the Markdown and stored in the JSON.
        extra: anything else stored in the JSON (settings, per-method details).
    Returns:
        the four paths.
    """
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + s) for s in (".md", ".csv", ".json", ".png")]
    md = [f"# {title}", "", markdown_table(rows, columns), ""]
    if paper:
        md += ["Paper (EDTN, arXiv 2310.10073):", "", markdown_table(paper["rows"], paper["columns"]), ""]
    md += [f"- {n}" for n in notes]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c.key for c in columns], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c.key: ("" if not _number(row.get(c.key)) and c.fmt != "s" else row.get(c.key))
                         for c in columns})
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    payload = {"title": title, "columns": [c.key for c in columns], "rows": clean, "notes": list(notes),
               "paper": paper["rows"] if paper else None, **(extra or {})}
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8")
    _bar_chart(rows, columns, paths[3], title)
    return paths


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
