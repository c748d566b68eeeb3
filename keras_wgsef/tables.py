"""Tables for people: one function renders rows as aligned text or as Markdown (for notebooks).

The ``summary()`` methods (:meth:`keras_wgsef.BudgetPlan.summary`,
:meth:`tflite_export.ExportResult.summary`) and the reports' ``_repr_markdown_`` render through
:func:`format_table`, so a table prints and shows in a notebook with the same rows.

Example:
  >>> print(format_table(["layer", "width"], [["conv1", 16], ["head", 10]]))
  layer  width
  conv1     16
  head      10
  >>> print(format_table(["layer", "width"], [["conv1", 16]], markdown=True))
  | layer | width |
  |:---|---:|
  | conv1 | 16 |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_cell", "format_table"]


def format_cell(value: Any) -> str:
    """A number with thousands separators (floats to 3 significant digits), None as ``-``, else ``str``.

    Example:
      >>> format_cell(1234567), format_cell(0.91234), format_cell(None), format_cell("conv1")
      ('1,234,567', '0.912', '-', 'conv1')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> str:
    """``rows`` under ``header`` as aligned text (two spaces between columns) or as a Markdown table.

    The first column is left-aligned, the others right-aligned (numbers); cells go through
    :func:`format_cell`.

    Args:
      header: the column titles.
      rows: one sequence of cells per row, as many as ``header``.
      markdown: a Markdown pipe table instead of aligned text.

    Raises:
      ValueError: a row with another number of cells than ``header``.
    """
    cells = [[format_cell(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns ({list(header)}): {row}")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]).rstrip()

    return "\n".join([line([str(h) for h in header]), *(line(row) for row in cells)])
