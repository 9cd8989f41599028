"""Times and periods: ISO text to UTC datetimes, period bounds and labels."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

PRECISION = {4: "annual", 7: "monthly", 10: "daily"}  # length of "2024", "2024-01", "2024-01-01"


def parse_time(text: str) -> datetime:
    """An ISO date or datetime (or "YYYY", "YYYY-MM") as an aware UTC datetime."""
    text = text.strip()
    if len(text) == 4:
        text += "-01"
    if len(text) == 7:
        text += "-01"
    # Python 3.10's fromisoformat rejects a trailing "Z".
    return utc(datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text))


def utc(t: datetime) -> datetime:
    """Naive times are taken as UTC."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def period_start(t: datetime, kind: str) -> datetime:
    if kind == "annual":
        return t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "monthly":
        return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t


def period_end(start: datetime, kind: str) -> datetime:
    if kind == "annual":
        return start.replace(year=start.year + 1)
    if kind == "monthly":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + (timedelta(days=1) if kind == "daily" else timedelta(hours=1))


def label(t: datetime, kind: str) -> str:
    formats = {"annual": "%Y", "monthly": "%Y-%m", "daily": "%Y-%m-%d"}
    return t.strftime(formats.get(kind, "%Y-%m-%dT%H:%M:%SZ"))


def span(when: datetime | str) -> tuple[datetime, datetime, str | None]:
    """`when` as [start, end) and its kind: a year, month or day string is a span, else an instant
    (kind None).

    Raises:
        ValueError: `when` is not an ISO date or time.
    """
    kind = None if isinstance(when, datetime) else PRECISION.get(len(when.strip()))
    t = utc(when) if isinstance(when, datetime) else parse_time(when)
    if kind is None:
        return t, t + timedelta(microseconds=1), None
    return t, period_end(t, kind), kind
