"""What an export did, as one table per layer and one of the firmware figures.

:func:`export_summary` renders an :class:`tflite_export.ExportResult`:
``ExportResult.summary()`` prints it, a notebook shows it (``_repr_markdown_``) from the same
rows. The tables are drawn by :func:`keras_wgsef.tables.format_table`.

Example:
    >>> from tflite_export import export
    >>> result = export(model, x[:100], latency=False, arena=False, instructions=False)
    >>> print(export_summary(result).splitlines()[0])
    layer  width before  width after  params before  params after  MACs before  MACs after
    >>> "| .tflite bytes |" in export_summary(result, markdown=True)
    True
"""

from __future__ import annotations

from typing import Any

from keras_wgsef.tables import format_table

__all__ = ["FIRMWARE_FIGURES", "export_summary", "firmware_rows", "layer_rows"]

#: the Report fields the summary shows, in order (labels and formats from ``Report._ROWS``)
FIRMWARE_FIGURES = (
    "file_bytes",
    "params",
    "macs",
    "tflm_arena_bytes",
    "tflm_instructions",
    "float_accuracy",
    "accuracy_litert",
    "accuracy_tflm",
    "litert_xnnpack_median_us",
)
LAYER_HEADER = ("layer", "width before", "width after", "params before", "params after", "MACs before", "MACs after")


def layer_rows(shrink_report: Any) -> list[tuple[Any, ...]]:
    """Per layer with weights: widths, parameters and MACs before and after, then the total.

    Args:
      shrink_report: a :class:`tflite_export.ShrinkReport`.
    """
    rows: list[tuple[Any, ...]] = []
    widths = shrink_report.plan.widths
    for path, (pb, pa) in shrink_report.params.items():
        if path == "total":
            continue
        if pb == 0:
            continue  # no weights: activations, pooling, reshapes follow their producer's width
        wb, wa = widths.get(path, (None, None))
        mb, ma = shrink_report.macs.get(path, (0, 0))
        rows.append((path, wb, wa, pb, pa, mb, ma))
    (pb, pa), (mb, ma) = shrink_report.params["total"], shrink_report.macs["total"]
    rows.append(("total", None, None, pb, pa, mb, ma))
    return rows


def firmware_rows(report: Any) -> list[tuple[str, str]]:
    """``(label, value)`` of each of :data:`FIRMWARE_FIGURES` (``n/a`` where not measured)."""
    from tflite_export.measure import Report

    labels = {attr: (label, kind) for attr, label, kind in Report._ROWS}
    return [(labels[attr][0], Report._fmt(getattr(report, attr), labels[attr][1])) for attr in FIRMWARE_FIGURES]


def _missing_notes(report: Any) -> list[str]:
    """The report's notes that say why a figure is missing."""
    return [n for n in report.notes if "not measured" in n or "skipped" in n or "not reported" in n]


def export_summary(result: Any, *, markdown: bool = False) -> str:
    """The layers' widths, parameters and MACs before and after shrinking, then the firmware figures.

    Args:
      result: an :class:`tflite_export.ExportResult`.
      markdown: Markdown tables (what a notebook shows) instead of aligned text.
    """
    parts = []
    if result.shrink_report is not None:
        parts.append(format_table(LAYER_HEADER, layer_rows(result.shrink_report), markdown=markdown))
    else:
        parts.append("exported without shrinking: the layers are as trained")
    parts.append(format_table((result.report.name, "value"), firmware_rows(result.report), markdown=markdown))
    notes = _missing_notes(result.report)
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"
