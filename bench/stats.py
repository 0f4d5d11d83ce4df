"""Repetition statistics: median, min, max."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median, min and max of ``n`` samples (seconds, bytes or ratios)."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        """The same summary with every value multiplied by ``factor`` (e.g. seconds -> ms)."""
        return Summary(self.median * factor, self.min * factor, self.max * factor, self.n)


def summarize(samples: Iterable[float]) -> Summary:
    """Summarise samples.

    Raises:
        ValueError: no samples.
    """
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("cannot summarise zero samples: run at least one repetition")
    return Summary(statistics.median(values), min(values), max(values), len(values))
