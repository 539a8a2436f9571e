"""GET /api/v1/usage on a real gateway whose database holds seeded allocations (what the
reconciler records for each scheduler and worker): users read their own usage only, an admin
reads everyone's or filters, every bad argument is a 400 saying why, CSV parses back to the
JSON numbers, and paging with a total over the whole query."""

from __future__ import annotations

import csv
import io
import re
import time
import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call, create
from support.paths import CONFIGS
from support.waiting import wait_for

from dask_gateway_server.store import allocations_table, metadata, usage_clusters_table
from dask_gateway_server.usage import GIB, period_bounds

ALICE = basic("alice")
BOB = basic("bob")
ADMIN = basic("usage-admin")
#: A user whose name a spreadsheet would run as a formula (simple auth takes any name).
EVIL = "=1+2+cmd|' C calc'!A0"
H = 3_600_000
#: 2026-11-02 00:00 UTC: a fixed past range the seeded rows live in.
T0 = 1_793_577_600_000
DAY = 86_400_000

CONFIG = """
exec(open({default!r}).read())
c.Authenticator.admin_users = {{"usage-admin"}}
"""


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "usage_gateway_config.py"
    path.write_text(CONFIG.format(default=str(CONFIGS / "gateway_config.py")))
    return path


def seed_database(data_dir: Path, seeded_at: int) -> None:
    """The accounting rows of five clusters, written where the gateway will find them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{data_dir / 'dask_gateway.sqlite'}")
    metadata.create_all(engine)
    month = period_bounds("month", seeded_at)[0]

    def rec(name, user, groups, created):
        return {
            "cluster": name,
            "username": user,
            "groups": groups,
            "options": {},
            "created": created,
        }

    def alloc(name, user, start, stop, cores=1.0, memory=GIB, worker=None):
        return {
            "cluster": name,
            "username": user,
            "worker": worker,
            "cores": cores,
            "memory": memory,
            "start": start,
            "stop": stop,
        }

    with engine.begin() as conn:
        conn.execute(
            usage_clusters_table.insert(),
            [
                rec("a1", "alice", ["physics"], T0),
                rec("a2", "alice", [], T0 + DAY),
                rec("b1", "bob", ["bio", "physics"], T0),
                rec("a-now", "alice", [], month - H),
                rec("b-now", "bob", [], seeded_at - H),
                rec("evil", EVIL, ["@team"], T0 - 10 * DAY),
            ],
        )
        conn.execute(
            allocations_table.insert(),
            [
                # alice: 2 h of a scheduler, plus a 2-core worker 1 h across midnight.
                alloc("a1", "alice", T0, T0 + 2 * H),
                alloc("a1", "alice", T0 + DAY - H // 2, T0 + DAY + H // 2, 2, 2 * GIB, "w1"),
                alloc("a2", "alice", T0 + DAY, T0 + DAY + 3 * H, 0.5, GIB // 2),
                # bob: 4 h with 2 GiB.
                alloc("b1", "bob", T0 + H, T0 + 5 * H, 1, 2 * GIB),
                # This month: alice 1 s of it (the hour before is last month's); bob, lately.
                alloc("a-now", "alice", month - H, month + 1000),
                # (Stopped: the start-up repair closes an open one without a cluster row.)
                alloc("b-now", "bob", seeded_at - H, seeded_at - 1000, 4),
                alloc("evil", EVIL, T0 - 10 * DAY, T0 - 10 * DAY + H),
            ],
        )
    engine.dispose()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    directory = tmp_path_factory.mktemp("usage-gateway")
    gateway = GatewayProcess(directory / "gw", config=write_config(directory))
    gateway.seeded_at = int(time.time() * 1000)
    seed_database(gateway.data_dir, gateway.seeded_at)
    gateway.start()
    yield gateway
    code = gateway.stop()
    _kill_leftovers(gateway.data_dir)
    assert code == 0, gateway.log()


def usage(gw, headers, **query):
    return call(
        "GET", f"{gw.address}/api/v1/usage?{urllib.parse.urlencode(query)}", headers=headers
    )


RANGE = {"since": T0, "until": T0 + 2 * DAY}


def test_a_user_reads_their_own_usage(gw):
    r = usage(gw, ALICE, **RANGE)
    assert r.status == 200, r.body
    body = r.json()
    assert body["since"] == T0 and body["until"] == T0 + 2 * DAY and body["by"] == "user"
    assert body["next_offset"] is None
    # 2 h × 1 core + 1 h × 2 cores + 3 h × 0.5 core = 5.5 core-hours.
    assert body["rows"] == [
        {
            "user": "alice",
            "clusters": 2,
            "core_seconds": 5.5 * 3600,
            "memory_byte_seconds": 5.5 * 3600 * GIB,
            "core_hours": 5.5,
            "memory_gib_hours": 5.5,
        }
    ]
    assert body["total"] == {k: v for k, v in body["rows"][0].items() if k != "user"}
    assert usage(gw, ALICE, user="alice", **RANGE).json() == body
    # ISO 8601 dates say the same range.
    iso = usage(gw, ALICE, since="2026-11-02", until="2026-11-04T00:00:00Z").json()
    assert iso == body


def test_another_users_usage_is_refused(gw):
    r = usage(gw, ALICE, user="bob", **RANGE)
    assert r.status == 403 and "bob" in r.json()["error"]
    r = usage(gw, BOB, user="alice", by="cluster", format="csv", **RANGE)
    assert r.status == 403 and r.headers["Content-Type"].startswith("application/json")
    # bob's own, by cluster: nothing of alice's.
    rows = usage(gw, BOB, by="cluster", **RANGE).json()["rows"]
    assert [(r["cluster"], r["user"], r["groups"]) for r in rows] == [
        ("b1", "bob", ["bio", "physics"])
    ]
    assert rows[0]["start_time"] == T0 and rows[0]["stop_time"] == T0 + 5 * H
    assert usage(gw, {}, **RANGE).status == 401


def test_an_admin_reads_everyones_or_filters(gw):
    body = usage(gw, ADMIN, **RANGE).json()
    assert [(r["user"], r["core_hours"], r["memory_gib_hours"]) for r in body["rows"]] == [
        ("alice", 5.5, 5.5),
        ("bob", 4.0, 8.0),
    ]
    assert body["total"]["clusters"] == 3 and body["total"]["core_hours"] == 9.5
    only_bob = usage(gw, ADMIN, user="bob", **RANGE).json()
    assert [r["user"] for r in only_bob["rows"]] == ["bob"]
    # By group: b1 counts in bio and physics; a2 has no group.
    groups = usage(gw, ADMIN, by="group", **RANGE).json()
    assert [(r["group"], r["clusters"], r["core_hours"]) for r in groups["rows"]] == [
        ("bio", 1, 4.0),
        ("physics", 2, 8.0),
        (None, 1, 1.5),
    ]
    assert groups["total"] == body["total"]
    physics = usage(gw, ADMIN, group="physics", **RANGE).json()
    assert [r["user"] for r in physics["rows"]] == ["alice", "bob"]
    assert physics["total"]["core_hours"] == 8.0
    # By day: alice's worker is split at midnight.
    days = usage(gw, ADMIN, by="day", user="alice", **RANGE).json()["rows"]
    assert [(d["day"], d["core_hours"]) for d in days] == [
        ("2026-11-02", 3.0),
        ("2026-11-03", 2.5),
    ]


def test_defaults_are_this_period_up_to_now(gw):
    month = period_bounds("month", gw.seeded_at)[0]
    body = usage(gw, ALICE).json()
    assert body["since"] == month and body["until"] >= gw.seeded_at
    # Only the second of a-now's allocation that falls in this month.
    assert body["total"]["core_seconds"] == 1.0 and body["total"]["clusters"] == 1
    # An until in the future counts up to now only.
    later = usage(gw, BOB, since=gw.seeded_at - H, until=gw.seeded_at + 10 * DAY).json()
    assert later["until"] == gw.seeded_at + 10 * DAY
    assert later["total"]["core_seconds"] == 4 * 3599


def test_a_running_cluster_counts_up_to_now(gw):
    """A real cluster: its scheduler's allocation counts up to now while it runs, and stops
    counting once it stopped."""
    carol = basic("usage-carol")
    t0 = int(time.time() * 1000)
    name = create(gw, carol)
    url = f"{gw.address}/api/v1/clusters/{name}"
    try:
        wait_for(
            lambda: call("GET", url + "?wait", headers=carol).json()["status"] == "RUNNING",
            what="the cluster running",
        )
        first = usage(gw, carol, by="cluster", since=t0).json()["rows"]
        t1 = int(time.time() * 1000)
        assert [(r["cluster"], r["stop_time"]) for r in first] == [(name, None)]
        # Its scheduler (1 core) started after t0 and counts up to now (it started before
        # the first heartbeat made the cluster RUNNING: some time has passed).
        assert 0 < first[0]["core_seconds"] <= (t1 - t0) / 1000
    finally:
        call("DELETE", url, headers=carol)
    wait_for(
        lambda: call("GET", url, headers=carol).json()["status"] == "STOPPED",
        what="the cluster stopped",
    )
    t2 = int(time.time() * 1000)
    ended = usage(gw, carol, by="cluster", since=t0).json()["rows"]
    assert ended[0]["stop_time"] is not None and t0 < ended[0]["stop_time"] <= t2
    assert first[0]["core_seconds"] <= ended[0]["core_seconds"] <= (t2 - t0) / 1000
    assert usage(gw, carol, by="cluster", since=t0).json()["rows"] == ended  # counts no more


def test_paging_and_total(gw):
    first = usage(gw, ADMIN, by="cluster", limit=2, **RANGE).json()
    assert [r["cluster"] for r in first["rows"]] == ["a1", "b1"]
    assert first["next_offset"] == 2
    second = usage(gw, ADMIN, by="cluster", limit=2, offset=2, **RANGE).json()
    assert [r["cluster"] for r in second["rows"]] == ["a2"] and second["next_offset"] is None
    assert first["total"] == second["total"] and first["total"]["clusters"] == 3
    assert usage(gw, ADMIN, by="cluster", offset=10, **RANGE).json()["rows"] == []


def test_csv_parses_back_to_the_json_numbers(gw):
    for by in ("user", "group", "cluster", "day"):
        body = usage(gw, ADMIN, by=by, **RANGE).json()
        r = usage(gw, ADMIN, by=by, format="csv", **RANGE)
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        assert r.headers["Content-Disposition"] == (
            f'attachment; filename="dask-gateway-usage-by-{by}-2026-11-02-2026-11-04.csv"'
        )
        table = list(csv.DictReader(io.StringIO(r.body.decode())))
        assert len(table) == len(body["rows"]) > 0
        for text, row in zip(table, body["rows"], strict=True):
            assert list(text) == list(row)
            for key, value in row.items():
                if isinstance(value, float):
                    assert float(text[key]) == value, (by, key)
                elif isinstance(value, int):
                    assert int(text[key]) == value, (by, key)
                elif isinstance(value, list):
                    assert text[key].split() == value
                else:
                    assert text[key] == ("" if value is None else value)
    # Accept: text/csv asks for it too; paging says what comes next in a header.
    r = usage(gw, {**ADMIN, "Accept": "text/csv"}, by="cluster", limit=1, **RANGE)
    assert r.headers["Content-Type"].startswith("text/csv")
    assert r.body.decode().splitlines()[0].startswith("cluster,user,groups,start_time")
    assert r.headers["X-Dask-Gateway-Next-Offset"] == "1"


def test_a_name_cannot_become_a_formula_in_an_admins_spreadsheet(gw):
    """CSV injection: a user names themselves like a spreadsheet formula, so that it runs
    when an admin opens the usage CSV. The cell is quoted; the user still reads their own
    usage under their name."""
    span = {"since": T0 - 10 * DAY, "until": T0}
    own = usage(gw, basic(EVIL), **span).json()
    assert [r["user"] for r in own["rows"]] == [EVIL] and own["total"]["core_hours"] == 1.0
    for by in ("user", "cluster", "group"):
        r = usage(gw, ADMIN, by=by, format="csv", **span)
        assert r.status == 200
        table = list(csv.reader(io.StringIO(r.body.decode())))
        assert len(table) == 2, table
        for cell in table[1]:
            assert not cell.startswith(("=", "+", "-", "@")), (by, cell)
        if by != "group":
            assert table[1][1 if by == "cluster" else 0] == "'" + EVIL
        else:
            assert table[1][0] == "'@team"


@pytest.mark.parametrize(
    "query, words",
    [
        ({"since": "yesterday"}, "since must be"),
        ({"until": "2026-13-45"}, "until must be"),
        ({"since": "-1"}, "since must be between"),
        ({"since": T0, "until": T0}, "must be after since"),
        ({"since": T0 + DAY, "until": T0}, "must be after since"),
        ({"since": "2099-01-01"}, "must be after since"),
        ({"by": "week"}, "by must be one of"),
        ({"format": "xml"}, "format must be one of"),
        ({"limit": "0"}, "limit must be between 1 and 10000"),
        ({"limit": "10001"}, "limit must be between"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"offset": "-1"}, "offset must be between"),
        ({"offset": "1.5"}, "offset must be an integer"),
        ({"by": "day", "since": "2000-01-01", "until": "2020-01-01"}, "at most 3660 days"),
        ({"user": ""}, "user must not be empty"),
        ({"group": ""}, "group must not be empty"),
    ],
)
def test_bad_input_is_a_400_with_the_reason(gw, query, words):
    for who in (ALICE, ADMIN):
        r = usage(gw, who, **query)
        assert r.status == 400, (query, r.body)
        assert words in r.json()["error"], r.json()


def scrape(gw) -> str:
    r = call("GET", f"{gw.address}/metrics")
    assert r.status == 200, r.body
    return r.body.decode()


def counters(text: str, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(name + r'\{group="([^"]*)",user="([^"]*)"\} (\S+)', line)
        if m:
            out[m.group(2), m.group(1)] = float(m.group(3))
    return out


def test_usage_metrics_are_off_by_default(gw):
    text = scrape(gw)
    assert "dask_gateway_clusters" in text
    assert "core_seconds" not in text and "alice" not in text


def test_usage_metrics_by_user_and_group(tmp_path):
    gateway = GatewayProcess(
        tmp_path / "gw",
        ["--DaskGateway.usage_metrics=True"],
        config=write_config(tmp_path),
    )
    seed_database(gateway.data_dir, int(time.time() * 1000))
    gateway.start()
    try:
        text = scrape(gateway)
        cores = counters(text, "dask_gateway_core_seconds_total")
        memory = counters(text, "dask_gateway_memory_byte_seconds_total")
    finally:
        assert gateway.stop() == 0, gateway.log()
        _kill_leftovers(gateway.data_dir)
    # b1 (bio and physics) counts in each; clusters without a group under "".
    assert cores == {
        ("alice", ""): 1.5 * 3600 + 3601,
        ("bob", ""): 4 * 3599,
        ("alice", "physics"): 4 * 3600,
        ("bob", "bio"): 4 * 3600,
        ("bob", "physics"): 4 * 3600,
        (EVIL, "@team"): 3600,
    }
    assert memory[("alice", "physics")] == 4 * 3600 * GIB
    assert memory[("bob", "bio")] == 8 * 3600 * GIB


def test_usage_retention(tmp_path):
    """usage_max_age removes what stopped before it, and the records of clusters with
    nothing left; what still runs stays."""
    gateway = GatewayProcess(
        tmp_path / "gw",
        ["--DaskGateway.usage_max_age=86400", "--LocalBackend.db_cleanup_period=0.2"],
        config=write_config(tmp_path),
    )
    seeded_at = int(time.time() * 1000)
    seed_database(gateway.data_dir, seeded_at)
    gateway.start()
    try:
        wait_for(
            lambda: usage(gateway, ADMIN, by="cluster", **RANGE).json()["rows"] == [],
            timeout=30,
            what="the old allocations removed",
        )
        kept = usage(gateway, BOB, by="cluster", since=seeded_at - H).json()["rows"]
        assert [r["cluster"] for r in kept] == ["b-now"]
    finally:
        assert gateway.stop() == 0, gateway.log()
        _kill_leftovers(gateway.data_dir)
    engine = sa.create_engine(f"sqlite:///{gateway.data_dir / 'dask_gateway.sqlite'}")
    with engine.connect() as conn:
        records = set(conn.execute(sa.select(usage_clusters_table.c.cluster)).scalars())
    engine.dispose()
    assert {"a1", "a2", "b1"}.isdisjoint(records) and "b-now" in records
