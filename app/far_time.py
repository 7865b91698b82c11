"""`timestamptz` values Python cannot hold (after 9999, before year 1, ±infinity) read
as `FarTime` instead of failing the whole page: a datetime clamped to the nearest end
that remembers the server's exact value, so a keyset cursor built from it finds its
place again. Callers treat a FarTime as a per-row problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# The per-row reason for a run whose created_at is a FarTime.
INVALID_CREATED_AT = "invalid_created_at"
_MICRO = timedelta(microseconds=1)


class FarTime(datetime):
    """A timestamp beyond Python's range; `raw` is microseconds since 2000-01-01 UTC."""

    raw: int

    @classmethod
    def of(cls, raw: int) -> FarTime:
        edge = datetime.max if raw > 0 else datetime.min
        made = cls(edge.year, edge.month, edge.day, edge.hour, edge.minute, edge.second, edge.microsecond,
                   tzinfo=UTC)
        made.raw = raw
        return made


# PostgreSQL's -infinity: a keyset start before every stored timestamp, BC ones included.
MINUS_INFINITY_RAW = -(2**63)


def minus_infinity() -> FarTime:
    return FarTime.of(MINUS_INFINITY_RAW)


def decode(value: tuple[int]) -> datetime:
    raw = value[0]
    try:
        return PG_EPOCH + raw * _MICRO
    except OverflowError:
        return FarTime.of(raw)


def encode(value: datetime) -> tuple[int]:
    if isinstance(value, FarTime):
        return (value.raw,)
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return ((aware - PG_EPOCH) // _MICRO,)
