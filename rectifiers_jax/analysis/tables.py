"""The one table helper of the analysis tools: rows (dicts with the same keys) as plain text,
Markdown or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

Row = Mapping[str, Any]


def run_label(workdir: str | epath.PathLike, others: Sequence[str | epath.PathLike] = ()) -> str:
    """Short name of a run: its folder name, or the whole path if another run shares it."""
    name = epath.Path(workdir).name
    clash = [w for w in others if epath.Path(w).name == name and str(w) != str(workdir)]
    return str(workdir) if clash else name


def cell(value: Any, floatfmt: str = ".3f") -> str:
    """A table cell: "" for None, floats with `floatfmt`, ints with thousands separators,
    lists and tuples as "(a, b)"."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, floatfmt)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(cell(v, floatfmt) for v in value) + ")"
    return str(value)


def text_table(rows: Sequence[Row], floatfmt: str = ".3f") -> str:
    """Aligned plain-text table; numeric columns right-aligned."""
    if not rows:
        return "(no rows)"
    header = list(rows[0])
    cells = [[cell(row.get(key), floatfmt) for key in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    numeric = [all(isinstance(r.get(k), int | float | None) for r in rows) for k in header]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def markdown_table(rows: Sequence[Row], floatfmt: str = ".2f", header: Sequence[str] = ()) -> str:
    """GitHub Markdown table (`header` names the columns when there are no rows)."""
    header = list(rows[0]) if rows else list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row.get(h), floatfmt) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """CSV with a header row; numbers in full precision, None as empty."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(rows[0]) if rows else list(header), lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(rows: Sequence[Row], path: str | epath.PathLike) -> None:
    """`csv_text(rows)` to `path` (an empty file for no rows)."""
    epath.Path(path).write_text(csv_text(rows) if rows else "")
