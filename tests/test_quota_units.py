"""Quotas over time, in process: how they resolve, what they refuse and warn about, what the
periodic check does, with a fake ``Accounting`` (real gateways: tests/test_quotas.py)."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

import pytest
from traitlets import TraitError
from traitlets.config import Config

from dask_gateway_server import quotas as quotas_module
from dask_gateway_server.models import Cluster, JobStatus, User
from dask_gateway_server.quotas import (
    QuotaExhausted,
    UsageQuotas,
    header_value,
)
from dask_gateway_server.usage import Use, period_bounds

HOUR = 3600.0


class FakeAccounting:
    """Use per user and per group, set by the test; counts the queries."""

    def __init__(self) -> None:
        self.users: dict[str, float] = {}  # core-hours
        self.groups: dict[str, float] = {}
        self.memory: dict[str, float] = {}  # GiB-hours, per user
        self.group_memory: dict[str, float] = {}
        self.queries: list[tuple] = []

    async def report(self, since_ms, until_ms, by, user=None, group=None) -> tuple[list, dict]:
        """The report's total, as ``Accounting.report`` gives it."""
        assert by == "user" and (user is None) != (group is None)
        self.queries.append((user, None if group is None else (group,)))
        if user is not None:
            core = self.users.get(user, 0.0)
            gib = self.memory.get(user, 0.0)
        else:
            core = self.groups.get(group, 0.0)
            gib = self.group_memory.get(group, 0.0)
        use = Use(core * HOUR, gib * HOUR * 2**30)
        return [], {
            "core_seconds": use.core_seconds,
            "memory_byte_seconds": use.memory_byte_seconds,
        }


class FakeEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    async def record(self, cluster, kind, message, **kwargs) -> None:
        self.recorded.append((cluster.name, kind, message))


class FakeReconciler:
    def __init__(self, clusters: list[Cluster]) -> None:
        self.clusters = {c.name: c for c in clusters}
        self.events = FakeEvents()
        self.stopped: list[tuple[str, str]] = []

    def clusters_of(self, name: str) -> list[Cluster]:
        return [c for c in self.clusters.values() if c.username == name]

    def live_clusters(self) -> list[Cluster]:
        return [c for c in self.clusters.values() if not c.status.is_done]

    async def stop_cluster(self, cluster, failed=False, message="", requested="") -> None:
        self.stopped.append((cluster.name, requested))
        cluster.target = JobStatus.STOPPED


def cluster(name: str, user: str, groups=(), count: int = 2) -> Cluster:
    return Cluster(
        name=name,
        username=user,
        token=name * 4,
        options={},
        config={},
        tls_cert=b"",
        tls_key=b"",
        count=count,
        groups=frozenset(groups),
        status=JobStatus.RUNNING,
    )


def make(settings: dict | None = None, clusters=()) -> tuple[UsageQuotas, FakeAccounting]:
    config = Config()
    for key, value in (settings or {}).items():
        setattr(config.UsageQuotas, key, value)
    quotas = UsageQuotas(config=config)
    accounting = FakeAccounting()
    reconciler = FakeReconciler(list(clusters))
    quotas.bind(accounting, reconciler)  # type: ignore[arg-type]  # the fake's duck type
    return quotas, accounting


ALICE = User("alice", frozenset({"physics", "staff"}))
BOB = User("bob")


def test_resolution_like_limits():
    quotas, _ = make(
        {
            "core_hours": 10,
            "groups": {
                "physics": {"core_hours": 100},
                "staff": {"core_hours": 50, "memory_gib_hours": None},
            },
            "users": {"carol": {"core_hours": 1}},
        }
    )
    # The most generous group wins; None (no quota) is the most generous of all.
    assert quotas.for_user(ALICE) == {"core_hours": 100, "memory_gib_hours": None}
    assert quotas.for_user(BOB) == {"core_hours": 10, "memory_gib_hours": None}
    # The user's own entry wins over the groups'.
    carol = User("carol", frozenset({"physics"}))
    assert quotas.for_user(carol) == {"core_hours": 1, "memory_gib_hours": None}
    assert quotas.applies(BOB)


def test_nothing_configured_reads_nothing():
    """No quota: creating and scaling never query the database (the request rates stay)."""
    quotas, accounting = make()
    assert not quotas.configured
    assert asyncio.run(quotas.check_create(ALICE)) is None
    assert asyncio.run(quotas.check_scale(cluster("c1", "alice"), 5)) is None
    assert asyncio.run(quotas.check_adapt(cluster("c1", "alice"), None)) == (None, None, None)
    assert accounting.queries == []
    # A quota for someone else only: alice costs no query either.
    quotas, accounting = make({"users": {"bob": {"core_hours": 1}}})
    assert asyncio.run(quotas.check_create(ALICE)) is None
    assert accounting.queries == []


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"period": "year"}, "period"),
        ({"when_exhausted": "explode"}, "when_exhausted"),
        ({"core_hours": -1}, "core_hours"),
        ({"warn_at": 1.5}, "warn_at"),
        ({"check_interval": 0}, "check_interval"),
        ({"users": {"alice": {"core_hour": 1}}}, "unknown quota 'core_hour'"),
        ({"groups": {"physics": {"core_hours": -3}}}, r"must be a finite number >= 0"),
        ({"group_totals": {"physics": 5}}, r"group_totals\['physics'\] must be a dict"),
        ({"users": {"alice": {"core_hours": "lots"}}}, "must be a number or None"),
    ],
)
def test_bad_settings_are_clear_errors(settings, match):
    with pytest.raises(TraitError, match=match):
        make(settings)


def test_states_and_messages():
    quotas, accounting = make({"period": "week", "core_hours": 100})
    start, end = period_bounds("week")
    state = asyncio.run(quotas.state(BOB))
    assert state.state == "ok" and state.message is None
    assert (state.period_start, state.period_end) == (start, end)

    accounting.users["bob"] = 85.2
    state = asyncio.run(quotas.state(BOB, fresh=True))
    assert state.state == "warning"
    ends = re.escape(f"the week ends {quotas_module._utc(end)}")
    assert re.fullmatch(
        rf"bob has used 85\.2 of 100 core-hours this week \(85 %\); {ends}",
        state.message,
    ), state.message

    accounting.users["bob"] = 100.4
    state = asyncio.run(quotas.state(BOB, fresh=True))
    assert state.state == "exhausted"
    assert state.message == (
        "The core-hours quota of bob is used up (100.4 of 100 core-hours this week, 100 %) "
        f"until the week ends {quotas_module._utc(end)}"
    )
    data = state.to_json()
    assert data["quotas"] == [
        {
            "kind": "core_hours",
            "scope": "user",
            "group": None,
            "limit": 100.0,
            "used": 100.4,
            "share": 1.004,
        }
    ]
    assert data["use"] == {"core_hours": 100.4, "memory_gib_hours": 0.0}
    assert data["state"] == "exhausted" and data["when_exhausted"] == "keep"


def test_group_totals_count_for_members():
    quotas, accounting = make({"group_totals": {"physics": {"core_hours": 10}}})
    accounting.groups["physics"] = 9.0
    state = asyncio.run(quotas.state(ALICE))
    assert [(q.scope, q.group, q.used) for q in state.quotas] == [("group", "physics", 9.0)]
    assert state.state == "warning"
    assert state.message.startswith("Group physics has used 9 of 10 core-hours")
    # Not a member: no quota, and no query of the group's use.
    accounting.queries.clear()
    assert asyncio.run(quotas.check_create(BOB)) is None
    assert accounting.queries == []
    accounting.groups["physics"] = 10.0
    quotas._cache.clear()
    with pytest.raises(QuotaExhausted, match="core-hours quota of group physics is used up"):
        asyncio.run(quotas.check_create(User("dave", frozenset({"physics"}))))


def test_create_and_scale_refused_scale_down_allowed():
    quotas, accounting = make({"period": "day", "core_hours": 1})
    accounting.users["alice"] = 1.5
    with pytest.raises(QuotaExhausted) as info:
        asyncio.run(quotas.check_create(ALICE))
    assert str(info.value).startswith(
        "Cannot create a cluster: the core-hours quota of alice is used up (1.5 of 1 "
        "core-hours today, 150 %) until the day ends "
    )
    _, end = period_bounds("day")
    assert 0 < info.value.retry_after <= (end - quotas_module.now_ms()) / 1000 + 1

    c = cluster("c1", "alice", count=2)
    with pytest.raises(QuotaExhausted, match="Cannot scale cluster c1 up to 3 workers"):
        asyncio.run(quotas.check_scale(c, 3))
    warning = asyncio.run(quotas.check_scale(c, 1))  # down: allowed, with the warning
    assert warning.startswith("The core-hours quota of alice is used up")
    assert asyncio.run(quotas.check_scale(c, 2)) is not None  # the same count too

    maximum, why, warning = asyncio.run(quotas.check_adapt(c, 10))
    assert maximum == 2 and "Using `maximum=2` instead" in why and warning
    assert asyncio.run(quotas.check_adapt(c, 1))[:2] == (1, None)


def test_use_is_cached_for_a_few_seconds(monkeypatch):
    quotas, accounting = make({"core_hours": 10})
    for _ in range(5):
        asyncio.run(quotas.check_create(BOB))
    assert accounting.queries == [("bob", None)]
    asyncio.run(quotas.state(BOB, fresh=True))  # the quota route reads anew
    assert len(accounting.queries) == 2
    clock = [quotas_module.time.monotonic() + quotas_module.CACHE_SECONDS + 1]
    monkeypatch.setattr(quotas_module.time, "monotonic", lambda: clock[0])
    asyncio.run(quotas.check_create(BOB))
    assert len(accounting.queries) == 3


def test_stop_policy_stops_the_clusters_counting_towards_a_used_up_quota():
    mine = cluster("a1", "alice", groups={"physics"})
    theirs = cluster("b1", "bob", groups={"physics"})
    other = cluster("b2", "bob", groups=())
    quotas, accounting = make(
        {
            "period": "month",
            "when_exhausted": "stop",
            "users": {"alice": {"core_hours": 5}},
            "group_totals": {"physics": {"memory_gib_hours": 1}},
        },
        clusters=[mine, theirs, other],
    )
    accounting.users["alice"] = 6
    asyncio.run(quotas.enforce())
    reconciler = quotas.reconciler
    assert reconciler.stopped == [
        ("a1", "Stopped: the core-hours quota of alice for this month is used up")
    ]
    # The group's memory total used up too: every cluster created with the group stops,
    # whoever owns it; a cluster of bob's without the group keeps running.
    accounting.group_memory["physics"] = 1.5
    quotas._cache.clear()
    asyncio.run(quotas.enforce())
    assert reconciler.stopped[1:] == [
        ("b1", "Stopped: the memory GiB-hours quota of group physics for this month is used up")
    ]


def test_no_new_workers_caps_and_uncaps():
    c = cluster("a1", "alice", count=3)
    quotas, accounting = make(
        {"period": "week", "when_exhausted": "no-new-workers", "core_hours": 2}, clusters=[c]
    )
    assert quotas.cap(c) is None
    accounting.users["alice"] = 2
    asyncio.run(quotas.enforce())
    assert quotas.cap(c) == (3, "the core-hours quota of alice, used up this week")
    assert quotas.reconciler.events.recorded == [
        (
            "a1",
            "scaled",
            "Workers capped at 3 workers: the core-hours quota of alice for this week is used up",
        )
    ]
    c.count = 1  # scaled down: the cap follows (workers may go, never come)
    assert quotas.cap(c)[0] == 1
    asyncio.run(quotas.enforce())
    assert len(quotas.reconciler.events.recorded) == 1  # said once
    accounting.users["alice"] = 1  # a new period, say
    quotas._cache.clear()
    asyncio.run(quotas.enforce())
    assert quotas.cap(c) is None


def test_keep_policy_starts_no_check():
    quotas, _ = make({"core_hours": 1})

    async def run() -> None:
        quotas.start()
        assert quotas._task is None
        await quotas.stop()

    asyncio.run(run())


def test_warning_header_survives_any_name():
    message = "Gruppe Физика has used 85 of 100 core-hours today (85 %); ok\r\nX: y"
    value = header_value(message)
    assert value.isascii() and "\r" not in value and "\n" not in value
    assert unquote(value) == message
