"""Who used how much: ``GET /api/v1/usage`` (a new route; the cluster JSON is unchanged).

Core-seconds and memory byte-seconds by user, group, cluster or UTC day over a range, from
the recorded allocations (usage.py), as JSON or CSV for spreadsheets. Users read their own,
admins anyone's. Every bad argument is a 400 naming it, never a slow or failed query.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Any

from ..models import now_ms
from ..usage import (
    BY,
    DAY_MS,
    DEFAULT_PERIOD,
    MAX_DAYS,
    Accounting,
    csv_cell,
    csv_columns,
    period_bounds,
)
from .base import APIError, BaseHandler, Route

FORMATS = ("json", "csv")
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
#: The latest time a report may name: the last millisecond of the year 9999 (days and
#: dates past it have no ISO 8601 form).
MAX_TIME_MS = 253_402_300_799_999
#: The header that carries ``next_offset`` with a CSV answer (the body is only the table).
NEXT_OFFSET_HEADER = "X-Dask-Gateway-Next-Offset"
#: Cells a spreadsheet would run as a formula (CSV injection): such names get a leading '.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def parse_time(name: str, value: str) -> int:
    """Milliseconds since the epoch, from a number of them or an ISO 8601 date or time (UTC
    unless it says otherwise); 400 naming ``name`` otherwise."""
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise APIError(
                400,
                f"{name} must be milliseconds since the epoch or an ISO 8601 date or time, "
                f"got {value!r}",
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        try:
            number = int(when.timestamp() * 1000)
        except (OverflowError, ValueError):  # e.g. 0001-01-01 with a zone east of UTC
            number = -1
    if not 0 <= number <= MAX_TIME_MS:
        raise APIError(
            400, f"{name} must be between 1970-01-01 and 9999-12-31 (UTC), got {value!r}"
        )
    return number


def wants_csv(accept: str) -> bool:
    """``Accept`` asks for CSV before (or without) JSON."""
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind == "text/csv":
            return True
        if kind == "application/json":
            return False
    return False


def safe_text(value: str) -> str:
    """A name as a spreadsheet cell: one that starts like a formula gets a leading ', so a
    user named ``=HYPERLINK(...)`` cannot run a formula in an admin's spreadsheet."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def to_csv(by: str, rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header row; the numbers exactly as in JSON."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    columns = csv_columns(by)
    writer.writerow(columns)
    for row in rows:
        cells = []
        for column in columns:
            cell = csv_cell(row[column])
            if column in ("user", "group", "cluster", "groups"):
                cell = safe_text(cell)
            cells.append(cell)
        writer.writerow(cells)
    return out.getvalue()


class UsageHandler(BaseHandler):
    @property
    def accounting(self) -> Accounting:
        found = self.settings.get("accounting")
        return found if found is not None else Accounting(self.reconciler.store)

    async def get(self) -> None:
        arg = self.get_query_argument
        by = arg("by", "user")
        if by not in BY:
            raise APIError(400, f"by must be one of {', '.join(BY)}, got {by!r}")
        form = arg("format", None)
        if form is None:
            form = "csv" if wants_csv(self.request.headers.get("Accept", "")) else "json"
        elif form not in FORMATS:
            raise APIError(400, f"format must be one of {', '.join(FORMATS)}, got {form!r}")
        limit = self.int_query("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = self.int_query("offset", 0, 0, 2**31 - 1)
        since, until = self._range()
        if by == "day" and until - since > MAX_DAYS * DAY_MS:
            raise APIError(
                400,
                f"by=day covers at most {MAX_DAYS} days; ask for a shorter range "
                f"(this one has {(until - since) / DAY_MS:.0f} days)",
            )
        user = self._user()
        group = arg("group", None)
        if group is not None and not group:
            raise APIError(400, "group must not be empty")
        rows, total = await self.accounting.report(since, until, by, user, group)
        page = rows[offset : offset + limit]
        next_offset = offset + limit if offset + limit < len(rows) else None
        if form == "csv":
            self._write_csv(by, since, until, page, next_offset)
            return
        self.write_json(
            {
                "since": since,
                "until": until,
                "by": by,
                "rows": page,
                "total": total,
                "next_offset": next_offset,
            }
        )

    def _range(self) -> tuple[int, int]:
        """``since`` and ``until``: given, or the start of the current period and now."""
        raw_since = self.get_query_argument("since", None)
        raw_until = self.get_query_argument("until", None)
        until = now_ms() if raw_until is None else parse_time("until", raw_until)
        if raw_since is None:
            period = self.settings.get("usage_period") or DEFAULT_PERIOD
            # The period of ``until`` (now by default), so `until` alone asks for its period.
            since = period_bounds(period, max(0, until - 1))[0]
        else:
            since = parse_time("since", raw_since)
        if until <= since:
            raise APIError(
                400,
                f"until ({_iso(until)}{' = now' if raw_until is None else ''}) must be "
                f"after since ({_iso(since)})",
            )
        return since, until

    def _user(self) -> str | None:
        """Whose usage: a user's own (``user`` absent or theirs), an admin's choice (absent:
        everyone's); 403 for another user's."""
        me = self.current_user
        wanted = self.get_query_argument("user", None)
        if wanted is not None and not wanted:
            raise APIError(400, "user must not be empty")
        if me.admin:
            return wanted
        if wanted is not None and wanted != me.name:
            raise APIError(403, f"User {me.name} may not see the usage of user {wanted}")
        return me.name

    def _write_csv(
        self,
        by: str,
        since: int,
        until: int,
        rows: list[dict[str, Any]],
        next_offset: int | None,
    ) -> None:
        name = f"dask-gateway-usage-by-{by}-{_iso(since)[:10]}-{_iso(until)[:10]}.csv"
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        if next_offset is not None:
            self.set_header(NEXT_OFFSET_HEADER, str(next_offset))
        self.finish(to_csv(by, rows))


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


ROUTES: list[Route] = [("/api/v1/usage", UsageHandler)]
