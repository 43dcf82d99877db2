"""Flow times: integer nanoseconds since the Unix epoch (UTC), written as protobuf's JSON mapping
writes a google.protobuf.Timestamp (RFC 3339, 'Z', 0/3/6/9 fractional digits) and shown as
`hubble observe` shows them (Go's time.StampMilli, in UTC)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def now_ns() -> int:
    return time.time_ns()


def _split(ns: int) -> tuple[datetime, int]:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return _EPOCH + timedelta(seconds=seconds), nanos


def format_rfc3339(ns: int) -> str:
    """'2026-11-28T21:52:51.123456789Z', with as few fractional digits as protojson writes."""
    dt, nanos = _split(ns)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time; ValueError when it is not one."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2026-11-28T21:52:51.123Z")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7), m.group(8)
    dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        dt -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    delta = dt - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return seconds * 1_000_000_000 + nanos


def stamp_milli(ns: int) -> str:
    """Go's time.StampMilli ('Jan _2 15:04:05.000': the day padded with a space), in UTC."""
    dt, nanos = _split(ns)
    return (
        f"{_MONTHS[dt.month - 1]} {dt.day:2d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{nanos // 1_000_000:03d}"
    )
