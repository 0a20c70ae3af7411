"""Schedule windows: is a rule active at a given moment?"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from shared.config import WEEKDAYS, Schedule


def is_active(schedule: Schedule, at: datetime) -> bool:
    """Whether ``at`` (aware; naive means UTC) falls in a window of ``schedule``.

    Wall-clock times are compared in the schedule's timezone, so a 08:00-18:00 window
    stays 08:00-18:00 local across DST changes. An overnight window (start > end)
    belongs to the day it opens on: Friday 22:00-06:00 covers Saturday 03:00."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    local = at.astimezone(ZoneInfo(schedule.timezone))
    now = local.time().replace(tzinfo=None)
    start, end = schedule.start, schedule.end

    def opens_on(day) -> bool:
        if WEEKDAYS[day.weekday()] not in schedule.days:
            return False
        if schedule.date_from and day < schedule.date_from:
            return False
        return not (schedule.date_to and day > schedule.date_to)

    today = local.date()
    if start == end:  # the whole day
        return opens_on(today)
    if start < end:
        return start <= now < end and opens_on(today)
    # overnight: the evening part opened today, the morning part opened yesterday
    return (now >= start and opens_on(today)) or (now < end and opens_on(today - timedelta(days=1)))
