"""The usage report's arithmetic on a real Store (SQLite) with synthetic allocations:
clipping at since/until, running allocations up to now, splitting at UTC midnight, groups
counted in each, the by=cluster rows, CSV that parses back to the JSON numbers, and the
store's totals and retention."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
import uuid

import pytest
import sqlalchemy as sa

from dask_gateway_server.api.base import APIError
from dask_gateway_server.api.usage import parse_time, safe_text, to_csv, wants_csv
from dask_gateway_server.store import (
    Store,
    allocations_table,
    clusters_table,
    usage_clusters_table,
)
from dask_gateway_server.usage import DAY_MS, GIB, Accounting, csv_columns, summarize

H = 3_600_000  # an hour in ms
#: 2026-12-01 00:00 UTC.
D0 = 1_796_083_200_000
KEY = b"0" * 32


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A Store with its tables, on a fresh SQLite file or in a schema of its own in the test
    PostgreSQL (the SQL differs: greatest/least, json); seed(...) adds clusters and
    allocations directly (what the reconciler records)."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        base = os.environ.get("TEST_POSTGRES_URL")
        if not base:
            pytest.fail("TEST_POSTGRES_URL is not set: start one with scripts/services/start-pg.sh")
        schema = f"usage_units_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(base)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}options=-csearch_path%3D{schema}"
    s = Store(url, [KEY])

    async def setup():
        await s.setup()

    run(setup())
    yield s
    s.engine.dispose()
    if schema is not None:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def seed(store: Store, clusters: list[dict], allocations: list[dict]) -> None:
    with store.engine.begin() as conn:
        if clusters:
            conn.execute(usage_clusters_table.insert(), clusters)
        if allocations:
            conn.execute(allocations_table.insert(), allocations)


def cluster(name: str, user: str, groups: list[str], created: int) -> dict:
    return {"cluster": name, "username": user, "groups": groups, "options": {}, "created": created}


def alloc(
    name: str, user: str, start: int, stop: int | None, cores=1.0, memory=GIB, worker=None
) -> dict:
    return {
        "cluster": name,
        "username": user,
        "worker": worker,
        "cores": cores,
        "memory": memory,
        "start": start,
        "stop": stop,
    }


def report(store, since, until, by, now, user=None, group=None):
    users = None if user is None else [user]
    data = run(store.usage_between(since, until, now, users, by == "day"))
    return summarize(data, since, until, by, group)


def test_clipped_at_since_and_until_and_running_up_to_now(store):
    seed(
        store,
        [cluster("c1", "alice", [], D0 - H)],
        [
            alloc("c1", "alice", D0 - H, D0 + 3 * H),  # scheduler, clipped at since
            alloc("c1", "alice", D0 + 5 * H, None, cores=2, worker="w1"),  # still running
            alloc("c1", "alice", D0 - 5 * H, D0 - 2 * H, worker="w0"),  # before: not read
        ],
    )
    now = D0 + 6 * H
    rows, total = report(store, D0, D0 + 10 * H, "user", now)
    # 3 h of the scheduler (1 core) + 1 h of the running worker (2 cores) up to now.
    assert rows == [{"user": "alice", **total}]
    assert total["clusters"] == 1
    assert total["core_seconds"] == 5 * 3600
    assert total["core_hours"] == 5.0
    assert total["memory_gib_hours"] == 4.0
    assert total["memory_byte_seconds"] == 4 * 3600 * GIB
    # until before now: the running worker counts up to until only.
    _, total = report(store, D0, D0 + 5 * H + H // 2, "user", now)
    assert total["core_hours"] == 3 + 2 * 0.5


def test_split_at_utc_midnight_and_every_day_of_the_range(store):
    seed(
        store,
        [cluster("c1", "alice", ["physics"], D0 + 22 * H), cluster("c2", "bob", [], D0)],
        [
            alloc("c1", "alice", D0 + 22 * H, D0 + DAY_MS + 2 * H, cores=3),  # across midnight
            alloc("c2", "bob", D0 + 2 * DAY_MS + H, D0 + 2 * DAY_MS + 3 * H),  # within a day
            alloc("c2", "bob", D0 + 2 * DAY_MS + 5 * H, D0 + 2 * DAY_MS + 6 * H, worker="w"),
            alloc("c2", "bob", D0 + 3 * DAY_MS - H, None, cores=0.5),  # runs, up to now
        ],
    )
    now = D0 + 3 * DAY_MS + 4 * H
    rows, total = report(store, D0, D0 + 4 * DAY_MS, "day", now)
    assert [r["day"] for r in rows] == ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    assert [r["core_hours"] for r in rows] == [6.0, 6.0, 3.5, 2.0]
    assert [r["clusters"] for r in rows] == [1, 1, 1, 1]
    assert total["core_hours"] == 17.5 and total["clusters"] == 2
    assert report(store, D0, D0 + 4 * DAY_MS, "user", now)[1] == total
    # A range starting mid-day: its first row is that day, from since on.
    rows, _ = report(store, D0 + 23 * H, D0 + DAY_MS + H, "day", now)
    assert [(r["day"], r["core_hours"]) for r in rows] == [("2026-12-01", 3.0), ("2026-12-02", 3.0)]
    # Filters: a user's, a group's.
    rows, total = report(store, D0, D0 + 4 * DAY_MS, "day", now, user="bob")
    assert [r["core_hours"] for r in rows] == [0.0, 0.0, 3.5, 2.0] and total["clusters"] == 1
    rows, total = report(store, D0, D0 + 4 * DAY_MS, "day", now, group="physics")
    assert [r["clusters"] for r in rows] == [1, 1, 0, 0] and total["core_hours"] == 12.0


def test_groups_counted_in_each_and_none_for_no_group(store):
    seed(
        store,
        [
            cluster("c1", "alice", ["bio", "physics"], D0),
            cluster("c2", "bob", ["physics"], D0),
            cluster("c3", "carol", [], D0),
        ],
        [
            alloc("c1", "alice", D0, D0 + H),
            alloc("c2", "bob", D0, D0 + 2 * H),
            alloc("c3", "carol", D0, D0 + 4 * H),
        ],
    )
    rows, total = report(store, D0, D0 + DAY_MS, "group", D0 + DAY_MS)
    assert [(r["group"], r["clusters"], r["core_hours"]) for r in rows] == [
        ("bio", 1, 1.0),
        ("physics", 2, 3.0),
        (None, 1, 4.0),
    ]
    # Rows may sum to more than the total, which counts each cluster once.
    assert total["clusters"] == 3 and total["core_hours"] == 7.0
    # A group filter: its clusters only, and with by=group its row only.
    rows, total = report(store, D0, D0 + DAY_MS, "group", D0 + DAY_MS, group="physics")
    assert [r["group"] for r in rows] == ["physics"] and total["core_hours"] == 3.0
    rows, _ = report(store, D0, D0 + DAY_MS, "user", D0 + DAY_MS, group="physics")
    assert [r["user"] for r in rows] == ["alice", "bob"]
    # A user filter reads that user's rows only.
    rows, total = report(store, D0, D0 + DAY_MS, "user", D0 + DAY_MS, user="bob")
    assert [r["user"] for r in rows] == ["bob"] and total["core_hours"] == 2.0


def test_by_cluster_rows(store):
    seed(
        store,
        [cluster("c1", "alice", ["physics"], D0 - 1000), cluster("c2", "alice", [], D0 + H)],
        [
            alloc("c1", "alice", D0, D0 + 2 * H),
            alloc("c1", "alice", D0 + 10, D0 + H, worker="w1", cores=2),
            alloc("c2", "alice", D0 + H, None),
        ],
    )
    rows, total = report(store, D0, D0 + DAY_MS, "cluster", D0 + 2 * H)
    assert rows[0]["cluster"] == "c1" and rows[1]["cluster"] == "c2"
    assert rows[0]["groups"] == ["physics"] and rows[1]["groups"] == []
    assert rows[0]["start_time"] == D0 - 1000 and rows[0]["stop_time"] == D0 + 2 * H
    assert rows[1]["stop_time"] is None  # its scheduler still runs
    assert rows[0]["clusters"] == 1 and total["clusters"] == 2
    assert set(rows[0]) == set(csv_columns("cluster"))


def test_csv_parses_back_to_the_json_numbers(store):
    seed(
        store,
        [cluster("c1", "=HYPERLINK(1)", ["a", "b"], D0), cluster("c2", "bob", [], D0)],
        [
            alloc("c1", "=HYPERLINK(1)", D0 + 1, D0 + H // 7, cores=0.3, memory=3 * GIB + 17),
            alloc("c2", "bob", D0 + 13, None, cores=1.7, memory=123_456_789),
        ],
    )
    now = D0 + 5 * H + 77
    for by in ("user", "group", "cluster", "day"):
        rows, _ = report(store, D0, D0 + 2 * DAY_MS, by, now)
        rows = json.loads(json.dumps(rows))  # what a client of the JSON reads
        parsed = list(csv.DictReader(io.StringIO(to_csv(by, rows))))
        assert len(parsed) == len(rows)
        for text, row in zip(parsed, rows, strict=True):
            assert list(text) == list(csv_columns(by))
            for column in ("core_seconds", "memory_byte_seconds", "core_hours", "memory_gib_hours"):
                assert float(text[column]) == row[column], (by, column)
            assert int(text["clusters"]) == row["clusters"]
        if by == "cluster":
            assert parsed[0]["groups"] == "a b" and parsed[1]["stop_time"] == ""
            assert int(parsed[0]["start_time"]) == rows[0]["start_time"]
        if by == "user":
            # A name that a spreadsheet would run as a formula is quoted.
            assert parsed[0]["user"] == "'=HYPERLINK(1)" and parsed[1]["user"] == "bob"


def test_accounting_report_runs_off_the_loop(store):
    seed(store, [cluster("c1", "alice", [], D0)], [alloc("c1", "alice", D0, D0 + H)])

    async def main():
        return await Accounting(store).report(D0, D0 + H, "user")

    rows, total = run(main())
    assert rows[0]["core_hours"] == 1.0 == total["core_hours"]


def test_totals_and_retention(store):
    now = D0 + 10 * DAY_MS
    seed(
        store,
        [
            cluster("old", "alice", ["physics"], D0),
            cluster("new", "alice", ["physics"], D0 + 9 * DAY_MS),
            cluster("bobs", "bob", [], D0 + 9 * DAY_MS),
            cluster("pending", "bob", [], D0),  # created long ago, no allocation yet
        ],
        [
            alloc("old", "alice", D0, D0 + H),
            alloc("new", "alice", D0 + 9 * DAY_MS, D0 + 9 * DAY_MS + H, cores=2),
            alloc("bobs", "bob", now - H, None, memory=2 * GIB),
        ],
    )
    with store.engine.begin() as conn:
        conn.execute(
            clusters_table.insert(),
            {
                "name": "pending",
                "username": "bob",
                "status": 1,
                "target": 3,
                "count": 0,
                "options": {},
                "config": {},
                "state": {},
                "token": b"x",
                "tls_credentials": b"x",
                "scheduler_address": "",
                "dashboard_address": "",
                "api_address": "",
                "message": "",
                "start_time": D0,
                "stop_time": None,
            },
        )
    totals = {(u, g): (c, m) for u, g, c, m in run(store.usage_totals(now))}
    assert totals == {
        ("alice", ("physics",)): (3 * 3600.0, 2 * 3600.0 * GIB),
        ("bob", ()): (3600.0, 2 * 3600.0 * GIB),
    }
    # Split at a time: what stopped before it, and the rest (still running, or later).
    cut = D0 + 9 * DAY_MS + H // 2
    before = {(u, g): (c, m) for u, g, c, m in run(store.usage_totals(now, stopped_before=cut))}
    after = {(u, g): (c, m) for u, g, c, m in run(store.usage_totals(now, stopped_from=cut))}
    assert before == {("alice", ("physics",)): (3600.0, 3600.0 * GIB)}
    assert after == {
        ("alice", ("physics",)): (2 * 3600.0, 3600.0 * GIB),
        ("bob", ()): (3600.0, 2 * 3600.0 * GIB),
    }
    removed = run(store.delete_usage_before(D0 + 5 * DAY_MS))
    assert removed == (1, 1)  # "old"'s allocation and record; "pending" is still active
    with store.engine.connect() as conn:
        left = {r.cluster for r in conn.execute(usage_clusters_table.select())}
    assert left == {"new", "bobs", "pending"}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1796083200000", D0),
        ("2026-12-01", D0),
        ("2026-12-01T01:00:00", D0 + H),
        ("2026-12-01T01:00:00Z", D0 + H),
        ("2026-12-01T02:00:00+01:00", D0 + H),
    ],
)
def test_times(value, expected):
    assert parse_time("since", value) == expected


@pytest.mark.parametrize("value", ["yesterday", "-5", "2026-13-01", "", "99999999999999999"])
def test_bad_times(value):
    with pytest.raises(APIError) as e:
        parse_time("since", value)
    assert e.value.status_code == 400 and "since" in e.value.message


def test_accept_and_safe_text():
    assert wants_csv("text/csv") and wants_csv("text/csv, application/json")
    assert not wants_csv("application/json, text/csv") and not wants_csv("*/*")
    assert safe_text("alice") == "alice" and safe_text("-1") == "'-1"


def test_metric_totals_by_user_and_group(store):
    """The metrics' totals: what stopped long ago (read once, then reused) plus the rest
    (read each time), a cluster of several groups in each, running ones up to now."""
    real_now = int(time.time() * 1000)
    seed(
        store,
        [cluster("c1", "alice", ["a", "b"], D0), cluster("c2", "bob", [], real_now - H)],
        [alloc("c1", "alice", D0, D0 + H), alloc("c2", "bob", real_now - H, None, cores=2)],
    )
    accounting = Accounting(store)

    async def totals():
        return await accounting.totals_by_user_group()

    for _ in range(2):  # the second time from the settled part kept by the first
        before = int(time.time() * 1000)
        found = run(totals())
        after = int(time.time() * 1000)
        assert found[("alice", "a")] == found[("alice", "b")] == (3600.0, 3600.0 * GIB)
        cores, _ = found[("bob", "")]
        assert 2 * (before - real_now + H) / 1000 <= cores <= 2 * (after - real_now + H) / 1000
    # Allocations that stop later than the settled part's cutoff are in the other part.
    with store.engine.begin() as conn:
        conn.execute(
            allocations_table.update()
            .where(allocations_table.c.cluster == "c2")
            .values(stop=real_now)
        )
    assert run(totals())[("bob", "")] == (7200.0, 3600.0 * GIB)
