"""Stacked bar geometry for the dashboard's outcome chart, drawn as server-side SVG by the template.

Pure: counts in, rectangles out (no Django, no database). Bars are 10-minute buckets over the last 24 hours;
each bar stacks the deliveries that finished in it by state, in a fixed order so colours line up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape

BUCKET = timedelta(minutes=10)
SPAN = timedelta(hours=24)
# Bottom to top. Colours come from the badge classes' palette in app.css (.seg-<state>).
ORDER = ("succeeded", "retry_scheduled", "unknown", "needs_attention", "failed", "exhausted", "cancelled")
LABELS = {
    "succeeded": "succeeded",
    "retry_scheduled": "retry scheduled",
    "unknown": "outcome unknown",
    "needs_attention": "need attention",
    "failed": "failed",
    "exhausted": "exhausted",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class Segment:
    state: str
    y: float
    height: float
    count: int


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    start: datetime
    total: int
    segments: tuple[Segment, ...]

    @property
    def title(self) -> str:
        end = self.start + BUCKET
        parts = ", ".join(f"{s.count:,} {LABELS.get(s.state, s.state)}" for s in reversed(self.segments))
        return f"{self.start:%H:%M}–{end:%H:%M}: {parts}"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    start: datetime
    end: datetime
    peak: int
    bars: tuple[Bar, ...]
    totals: tuple[tuple[str, str, int], ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.bars

    @property
    def svg(self) -> str:
        """The chart as inline SVG (every interpolated text escaped); colours come from app.css."""
        out = [
            f'<svg viewBox="0 0 {self.width} {self.height}" width="{self.width}" height="{self.height}" '
            f'role="img" aria-label="{escape(self.summary)}" preserveAspectRatio="none">',
            f'<line class="axis" x1="0" y1="{self.height}" x2="{self.width}" y2="{self.height}"></line>',
        ]
        for bar in self.bars:
            out.append(f"<g><title>{escape(bar.title)}</title>")
            out += [
                f'<rect class="seg seg-{escape(s.state)}" x="{bar.x}" y="{s.y}" width="{bar.width}" '
                f'height="{s.height}"></rect>'
                for s in bar.segments
            ]
            out.append("</g>")
        out.append("</svg>")
        return "".join(out)

    @property
    def summary(self) -> str:
        if self.empty:
            return "No deliveries finished in the last 24 hours."
        parts = ", ".join(f"{n:,} {label}" for _state, label, n in self.totals)
        return f"Deliveries finished in the last 24 hours: {parts}."


def floor(moment: datetime) -> datetime:
    """The start of the bucket holding ``moment``."""
    size = int(BUCKET.total_seconds())
    return moment - timedelta(seconds=int(moment.timestamp()) % size, microseconds=moment.microsecond)


def window(now: datetime) -> tuple[datetime, int]:
    """The first bucket's start and the number of buckets; the last bucket holds ``now``."""
    count = int(SPAN / BUCKET)
    return floor(now) - BUCKET * (count - 1), count


def stacked(
    counts: Mapping[tuple[datetime, str], int], now: datetime, *, width: int = 288, height: int = 56
) -> Chart:
    """Bars for ``counts`` keyed by (bucket start, state). Buckets outside the window are ignored."""
    first, number = window(now)
    per_bucket: dict[int, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for (start, state), n in counts.items():
        index = int((start - first) / BUCKET)
        if n <= 0 or not 0 <= index < number:
            continue
        per_bucket.setdefault(index, {})[state] = per_bucket.get(index, {}).get(state, 0) + n
        totals[state] = totals.get(state, 0) + n
    peak = max((sum(states.values()) for states in per_bucket.values()), default=0)
    step = width / number
    bars = []
    for index in sorted(per_bucket):
        states = per_bucket[index]
        y = float(height)
        segments = []
        for state in sorted(states, key=_rank):
            h = states[state] / peak * height
            y -= h
            segments.append(Segment(state, round(y, 2), round(h, 2), states[state]))
        bars.append(
            Bar(
                x=round(index * step, 2),
                width=round(max(step - 0.5, 0.5), 2),
                start=first + BUCKET * index,
                total=sum(states.values()),
                segments=tuple(segments),
            )
        )
    ordered = tuple((s, LABELS.get(s, s), totals[s]) for s in sorted(totals, key=_rank))
    return Chart(width, height, first, first + BUCKET * number, peak, tuple(bars), ordered)


def _rank(state: str) -> int:
    return ORDER.index(state) if state in ORDER else len(ORDER)
