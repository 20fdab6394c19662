"""params.report: the HTML report."""

from __future__ import annotations

from pydantic import Field

from edge_glass.config.base import Strict


class ReportParams(Strict):
    """The HTML report (``python -m edge_glass.report --html``, the ``report`` stage)."""

    samples: int = Field(12, ge=1)  # random queries per direction, worst failures, caption cards
    top_k: int = Field(5, ge=1, le=50)
    thumbnail_px: int = Field(128, ge=16, le=512)
    audio_seconds: float = Field(5.0, gt=0, le=30)
