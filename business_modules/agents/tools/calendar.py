"""Dates and calendars for the model: weekdays, quarters, adding (business) days, spans, month grids.

Pure functions over `datetime.date`; ``today`` means the run's date (the day
it was created), so a run that resumes after a restart computes the same
answers it would have before.
"""

from __future__ import annotations

import calendar as _calendar
from datetime import date, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents.ports import ToolFailed
from business_modules.agents.tools.base import Tool, ToolContext

DATE_PATTERN = r"^(today|\d{4}-\d{2}-\d{2})$"
MAX_DAYS = 36_600

Operation = Literal["describe", "add_days", "add_business_days", "days_between", "month_calendar"]


def parse_day(text: str, today: date) -> date:
    """``YYYY-MM-DD`` or ``today``; ValueError for a day that does not exist."""
    if text == "today":
        return today
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def quarter_of(day: date) -> tuple[int, date, date]:
    """The quarter (1-4) of ``day`` and its first and last days."""
    quarter = (day.month - 1) // 3 + 1
    first = date(day.year, 3 * quarter - 2, 1)
    last_month = 3 * quarter
    return quarter, first, date(day.year, last_month, _calendar.monthrange(day.year, last_month)[1])


def describe(day: date) -> dict[str, Any]:
    quarter, first, last = quarter_of(day)
    iso = day.isocalendar()
    return {"date": day.isoformat(), "weekday": day.strftime("%A"), "iso_week": iso.week,
            "day_of_year": day.timetuple().tm_yday, "quarter": f"Q{quarter}", "quarter_start": first.isoformat(),
            "quarter_end": last.isoformat(),
            "month_end": date(day.year, day.month, _calendar.monthrange(day.year, day.month)[1]).isoformat(),
            "is_weekend": day.weekday() >= 5}


def add_business_days(day: date, days: int) -> date:
    """``day`` moved by ``days`` working days (Monday-Friday); a weekend start counts from the next workday."""
    step = 1 if days >= 0 else -1
    remaining = abs(days)
    weeks, remaining = divmod(remaining, 5)
    day += timedelta(weeks=weeks * step)
    while remaining:
        day += timedelta(days=step)
        if day.weekday() < 5:
            remaining -= 1
    return day


def business_days_between(start: date, end: date) -> int:
    """Working days from ``start`` (excluded) to ``end`` (included); negative when ``end`` is earlier."""
    sign = 1
    if end < start:
        start, end, sign = end, start, -1
    span = (end - start).days
    weeks, rest = divmod(span, 7)
    count = weeks * 5
    for offset in range(1, rest + 1):
        if (start + timedelta(days=offset + weeks * 7)).weekday() < 5:
            count += 1
    return sign * count


def month_calendar(day: date) -> dict[str, Any]:
    weeks = _calendar.Calendar(firstweekday=0).monthdayscalendar(day.year, day.month)
    return {"month": f"{day.year:04d}-{day.month:02d}", "first_weekday": "Monday",
            "weeks": weeks, "days": _calendar.monthrange(day.year, day.month)[1]}


class DatesArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Operation
    date: str = Field(pattern=DATE_PATTERN, max_length=10)
    other_date: str | None = Field(None, pattern=DATE_PATTERN, max_length=10)
    days: int | None = Field(None, ge=-MAX_DAYS, le=MAX_DAYS)


class Dates(Tool):
    name = "dates"
    description = ("Dates are YYYY-MM-DD or today. describe (weekday, quarter, month end), add_days or "
                   "add_business_days (days), days_between (other_date), month_calendar.")
    args_model = DatesArgs

    async def run(self, args: DatesArgs, ctx: ToolContext) -> dict[str, Any]:
        try:
            return compute(args, ctx.today)
        except (ValueError, OverflowError) as exc:
            raise ToolFailed(str(exc)) from None


def compute(args: DatesArgs, today: date) -> dict[str, Any]:
    """The answer to one `DatesArgs`; ValueError when an argument it needs is missing or not a date."""
    day = parse_day(args.date, today)
    if args.operation == "describe":
        return describe(day)
    if args.operation == "month_calendar":
        return month_calendar(day)
    if args.operation in ("add_days", "add_business_days"):
        if args.days is None:
            raise ValueError(f"{args.operation} needs days")
        moved = day + timedelta(days=args.days) if args.operation == "add_days" else add_business_days(day, args.days)
        return {"date": day.isoformat(), "days": args.days, "result": moved.isoformat(),
                "weekday": moved.strftime("%A")}
    if args.other_date is None:
        raise ValueError("days_between needs other_date")
    other = parse_day(args.other_date, today)
    return {"from": day.isoformat(), "to": other.isoformat(), "days": (other - day).days,
            "business_days": business_days_between(day, other), "weeks": round((other - day).days / 7, 2)}
