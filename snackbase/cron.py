"""Cron expressions for scheduled backups (pure): `minute hour day-of-month month day-of-week`, in UTC.

Each field takes `*`, a number, a range `a-b`, a list `a,b,c` and a step `*/n` or `a-b/n`; day of week
is 0-6 with 0 = Sunday (7 is Sunday too). As in cron, when both day fields are restricted a day
matching either one runs. An optional sixth field in front gives seconds (`*/30 * * * * *`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # second, minute, hour, dom, month, dow
_NAMES = ("second", "minute", "hour", "day of month", "month", "day of week")


class CronError(ValueError):
    pass


class Cron(msgspec.Struct, frozen=True):
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def matches(self, moment: datetime) -> bool:
        if moment.second not in self.seconds or moment.minute not in self.minutes:
            return False
        if moment.hour not in self.hours or moment.month not in self.months:
            return False
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def next_after(self, moment: datetime) -> datetime:
        """The first matching second strictly after `moment` (UTC), within five years."""
        t = moment.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=5 * 366)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_ok(t):
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            if t.second not in self.seconds:
                t += timedelta(seconds=1)
                continue
            return t
        raise CronError("the schedule never runs")

    def _day_ok(self, t: datetime) -> bool:
        day_ok = t.day in self.days
        weekday_ok = (t.isoweekday() % 7) in self.weekdays
        return (day_ok and weekday_ok) if (self.any_day or self.any_weekday) else (day_ok or weekday_ok)


def parse(text: str) -> Cron:
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise CronError(f"a cron schedule has 5 fields (minute hour day month weekday), got {text!r}")
    values = [_field(part, index) for index, part in enumerate(parts)]
    weekdays = frozenset(d % 7 for d in values[5])
    return Cron(
        values[0],
        values[1],
        values[2],
        values[3],
        values[4],
        weekdays=weekdays,
        any_day=parts[3] == "*",
        any_weekday=parts[5] == "*",
    )


def _field(text: str, index: int) -> frozenset[int]:
    low, high = _RANGES[index]
    out: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = end = int(body)
                if step_text:
                    end = high
        except ValueError:
            raise CronError(f"cron {_NAMES[index]} field {text!r} is not understood") from None
        if step < 1 or not low <= start <= end <= high:
            raise CronError(f"cron {_NAMES[index]} field {text!r} is out of range {low}-{high}")
        out.update(range(start, end + 1, step))
    return frozenset(out)
