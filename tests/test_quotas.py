"""Quotas over time on real gateways, with real schedulers and workers whose use the gateway
records: a tiny quota is used up while a cluster runs; then creating and scaling up are
refused (429, the quota, the use, the period's end), scaling down is not; the warning reaches
our client; the "stop" and "no-new-workers" policies act on running clusters; and the quota
route answers two users and an admin as it should."""

from __future__ import annotations

import functools
import re
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from support import waiting
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call, create
from support.paths import CONFIGS

from dask_gateway import BasicAuth, Gateway, GatewayWarning
from dask_gateway.client import GatewayRequestError

pytestmark = pytest.mark.timeout(300)
# Functions of this module run in the scheduler, which cannot import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.2)

ADMIN = "quota-admin"

#: The test configuration; users named phys-* belong to the group "physics".
CONFIG = """
exec(open({default!r}).read())

from dask_gateway_server.auth import SimpleAuthenticator


class GroupsAuthenticator(SimpleAuthenticator):
    async def authenticate(self, request):
        user = await super().authenticate(request)
        groups = ["physics"] if user.name.startswith("phys-") else []
        return self.make_user(user.name, groups, user.admin)


c.DaskGateway.authenticator_class = GroupsAuthenticator
c.Authenticator.admin_users = {{{admin!r}}}
{quotas}
"""

#: A few core-seconds (or GiB-seconds): a scheduler or a worker uses it up in seconds.
TINY = 4 / 3600
#: Schedulers hold no memory: a memory quota is used only once a worker runs, so a cluster
#: can always be scaled to its first worker before the quota runs out.
NO_SCHEDULER_MEMORY = "c.ClusterConfig.scheduler_memory = 0"
#: Workers of a quarter GiB.
SMALL = {"worker_memory": 0.25}


def write_config(directory: Path, quotas: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "quota_gateway_config.py"
    path.write_text(
        CONFIG.format(default=str(CONFIGS / "gateway_config.py"), admin=ADMIN, quotas=quotas)
    )
    return path


def start_gateway(directory: Path, quotas: str) -> GatewayProcess:
    gw = GatewayProcess(directory / "gw", config=write_config(directory, quotas))
    gw.start()
    return gw


def finish(gw: GatewayProcess) -> None:
    code = gw.stop()
    _kill_leftovers(gw.data_dir)
    assert code == 0, gw.log()


def quota(gw, user: str, query: str = "", status: int = 200) -> dict:
    r = call("GET", f"{gw.address}/api/v1/quota{query}", headers=basic(user))
    assert r.status == status, r.body
    return r.json()


def kinds_and_messages(gw, user: str, name: str) -> list[tuple[str, str]]:
    r = call("GET", f"{gw.address}/api/v1/clusters/{name}/events", headers=basic(user))
    assert r.status == 200, r.body
    return [(e["kind"], e["message"]) for e in r.json()["events"]]


def running(gw, user: str, name: str, workers: int = 0) -> None:
    """Wait until ``name`` runs; with ``workers``, scale it to them and wait until they
    joined."""

    def joined(n: int) -> bool:
        events = [k for k, _ in kinds_and_messages(gw, user, name)]
        return "running" in events and events.count("worker-joined") >= n

    wait_for(lambda: joined(0), what=f"cluster {name} running")
    if workers:
        r = call(
            "POST", f"{gw.address}/api/v1/clusters/{name}/scale", {"count": workers}, basic(user)
        )
        assert r.status == 200, r.body
        wait_for(lambda: joined(workers), what=f"{workers} workers of {name}")


def used_up(gw, user: str) -> dict:
    return wait_for(
        lambda: (q := quota(gw, user))["state"] == "exhausted" and q,
        what=f"the quota of {user} used up",
    )


def _asked(dask_scheduler) -> int:
    """Runs in the scheduler: the workers its gateway service asks for."""
    from dask_gateway.scheduler_preload import SERVICE_ATTR

    return getattr(dask_scheduler, SERVICE_ATTR).count


async def _heartbeat(dask_scheduler) -> bool:
    """Runs in the scheduler: a heartbeat now; True once the gateway took it."""
    from dask_gateway.scheduler_preload import SERVICE_ATTR

    return await getattr(dask_scheduler, SERVICE_ATTR).send_heartbeat()


def stop(gw, user: str, name: str) -> None:
    r = call("DELETE", f"{gw.address}/api/v1/clusters/{name}", headers=basic(user))
    assert r.status == 204, r.body


@pytest.fixture(scope="module")
def keep_gw(tmp_path_factory):
    """Policy "keep": a tiny daily quota for q-alice, a tiny group total for physics."""
    gw = start_gateway(
        tmp_path_factory.mktemp("quota-keep"),
        f"""
{NO_SCHEDULER_MEMORY}
c.UsageQuotas.period = "day"
c.UsageQuotas.users = {{"q-alice": {{"memory_gib_hours": {TINY!r}}}}}
c.UsageQuotas.group_totals = {{"physics": {{"memory_gib_hours": {TINY!r}}}}}
""",
    )
    yield gw
    finish(gw)


def test_a_used_up_quota_refuses_creating_and_scaling_up(keep_gw):
    gw = keep_gw
    alice = basic("q-alice")
    name = create(gw, alice, SMALL)
    running(gw, "q-alice", name, workers=1)
    state = used_up(gw, "q-alice")
    [line] = state["quotas"]
    assert line["kind"] == "memory_gib_hours" and line["scope"] == "user" and line["share"] >= 1
    assert state["use"]["memory_gib_hours"] >= TINY

    # Creating: 429, the quota, the use so far, the period's end, and when to come back.
    r = call("POST", f"{gw.address}/api/v1/clusters/", {}, alice)
    assert r.status == 429, r.body
    message = r.json()["error"]
    assert re.fullmatch(
        r"Cannot create a cluster: the memory GiB-hours quota of q-alice is used up \([0-9.e-]+ "
        r"of 0\.00111 memory GiB-hours today, \d+ %\) until the day ends "
        r"\d{4}-\d\d-\d\d 00:00 UTC",
        message,
    ), message
    retry = int(r.headers["Retry-After"])
    assert 0 < retry <= 86400
    assert abs(retry - (state["period_end"] / 1000 - time.time())) < 60

    with Gateway(gw.address, auth=BasicAuth("q-alice", "")) as gateway:
        # Our client: the refusal as a GatewayRequestError with the gateway's words.
        with pytest.raises(GatewayRequestError, match="GiB-hours quota of q-alice is used up"):
            gateway.submit()
        # Scaling up: refused; scaling down: done, with the quota's warning.
        with pytest.raises(GatewayRequestError) as info:
            gateway.scale_cluster(name, 3)
        assert info.value.status == 429
        assert f"Cannot scale cluster {name} up to 3 workers" in str(info.value)
        with pytest.warns(GatewayWarning, match="GiB-hours quota of q-alice is used up"):
            gateway.scale_cluster(name, 0)
        # Adaptive scaling may not add workers: its maximum becomes the count it has.
        with pytest.warns(GatewayWarning) as caught:
            gateway.adapt_cluster(name, minimum=0, maximum=5)
        said = [str(w.message) for w in caught if w.category is GatewayWarning]
        assert len(said) == 2 and "Using `maximum=0` instead" in said[1], said
        assert said[0].startswith("The memory GiB-hours quota of q-alice is used up")
        assert gateway.get_cluster(name).status.name == "RUNNING"  # "keep": it runs on
        gateway.stop_cluster(name)
    events = kinds_and_messages(gw, "q-alice", name)
    assert ("stop-requested", "Stop requested by q-alice") in events


def test_a_group_total_is_shared_by_the_members(keep_gw):
    gw = keep_gw
    name = create(gw, basic("phys-carol"), SMALL)
    running(gw, "phys-carol", name, workers=1)
    state = used_up(gw, "phys-carol")
    assert [(q["scope"], q["group"]) for q in state["quotas"]] == [("group", "physics")]
    assert state["message"].startswith("The memory GiB-hours quota of group physics is used up (")

    # Another member, who has used nothing himself, may not create either.
    dave = quota(gw, "phys-dave")
    assert dave["use"]["memory_gib_hours"] == 0 and dave["state"] == "exhausted"
    r = call("POST", f"{gw.address}/api/v1/clusters/", {}, basic("phys-dave"))
    assert r.status == 429 and "quota of group physics is used up" in r.json()["error"]
    # Someone outside the group has no quota at all.
    outsider = quota(gw, "q-bob")
    assert outsider["quotas"] == [] and outsider["state"] == "ok" and outsider["message"] is None
    stop(gw, "phys-carol", name)


def test_the_quota_route_for_two_users_and_an_admin(keep_gw):
    gw = keep_gw
    own = quota(gw, "q-bob")
    assert own["user"] == "q-bob" and own["period"] == "day"
    assert own == {**own, "warn_at": 0.8, "when_exhausted": "keep"}
    assert quota(gw, "q-bob", "?user=q-bob")["user"] == "q-bob"
    # Another user's: 403 for users, the state for admins (also of a user never seen).
    error = quota(gw, "q-bob", "?user=q-alice", status=403)["error"]
    assert error == "User q-bob may only see their own quota: ?user= is for admins"
    theirs = quota(gw, ADMIN, "?user=q-alice")
    assert theirs["user"] == "q-alice" and theirs["quotas"][0]["limit"] == pytest.approx(TINY)
    nobody = quota(gw, ADMIN, "?user=never-seen")
    assert nobody["use"] == {"core_hours": 0.0, "memory_gib_hours": 0.0}
    assert nobody["quotas"] == [] and nobody["state"] == "ok"
    assert quota(gw, "q-bob", "?user=", status=400)["error"].startswith("user must be")
    r = call("GET", f"{gw.address}/api/v1/quota")
    assert r.status == 401


def test_the_warning_reaches_the_client_and_the_widget(tmp_path):
    """At 80 % of a quota our client warns when creating. The use is made fixed first (a
    cluster that ran and stopped), then the gateway restarts with a quota of which it is
    90 %."""
    gw = start_gateway(tmp_path, "")
    try:
        name = create(gw, basic("q-erin"))
        running(gw, "q-erin", name)
        stop(gw, "q-erin", name)
        wait_for(
            lambda: any(k == "stopped" for k, _ in kinds_and_messages(gw, "q-erin", name)),
            what=f"cluster {name} stopped",
        )
        used = quota(gw, "q-erin")["use"]["core_hours"]
        assert used > 0
        gw.stop()
        write_config(
            tmp_path, f'c.UsageQuotas.users = {{"q-erin": {{"core_hours": {used / 0.9!r}}}}}'
        )
        gw.start()
        state = quota(gw, "q-erin")
        assert state["state"] == "warning", state
        with Gateway(gw.address, auth=BasicAuth("q-erin", "")) as gateway:
            with pytest.warns(GatewayWarning) as caught:
                cluster = gateway.new_cluster()
            try:
                [warning] = [str(w.message) for w in caught if w.category is GatewayWarning]
                assert re.fullmatch(
                    r"q-erin has used [0-9.e-]+ of [0-9.e-]+ core-hours this month \((89|90) "
                    r"%\); the month ends \d{4}-\d\d-01 00:00 UTC",
                    warning,
                ), warning
                assert cluster.quota_warning == warning
                from dask_gateway.widgets.cluster import ClusterWidget

                widget = ClusterWidget(cluster)
                assert "q-erin has used" in widget.message.value
                widget.close()
            finally:
                cluster.shutdown()
    finally:
        finish(gw)


def test_stop_policy_stops_the_running_cluster(tmp_path):
    gw = start_gateway(
        tmp_path,
        f"""
c.UsageQuotas.period = "week"
c.UsageQuotas.core_hours = {TINY!r}
c.UsageQuotas.when_exhausted = "stop"
c.UsageQuotas.check_interval = 0.5
""",
    )
    try:
        name = create(gw, basic("q-frank"))
        expected = (
            "stop-requested",
            "Stopped: the core-hours quota of q-frank for this week is used up",
        )
        wait_for(
            lambda: expected in kinds_and_messages(gw, "q-frank", name),
            what="the stop for the quota",
        )
        r = call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=basic("q-frank"))
        assert r.json()["status"] in ("STOPPING", "STOPPED")
        assert quota(gw, "q-frank")["when_exhausted"] == "stop"
    finally:
        finish(gw)


def test_no_new_workers_policy_caps_the_workers(tmp_path):
    gw = start_gateway(
        tmp_path,
        f"""
{NO_SCHEDULER_MEMORY}
c.UsageQuotas.period = "month"
c.UsageQuotas.memory_gib_hours = {TINY!r}
c.UsageQuotas.when_exhausted = "no-new-workers"
c.UsageQuotas.check_interval = 0.5
""",
    )
    try:
        grace = basic("q-grace")
        name = create(gw, grace, SMALL)
        running(gw, "q-grace", name)
        # Adaptive scaling from one worker on, set while nothing is used yet.
        r = call(
            "POST",
            f"{gw.address}/api/v1/clusters/{name}/adapt",
            {"minimum": 1, "maximum": 4},
            grace,
        )
        assert r.status == 200 and r.json()["ok"] is True, r.body
        expected = (
            "scaled",
            "Workers capped at 1 worker: the memory GiB-hours quota of q-grace for this month "
            "is used up",
        )
        wait_for(lambda: expected in kinds_and_messages(gw, "q-grace", name), what="the cap event")
        # Work to do: adaptive scaling in the scheduler asks for more workers; once the
        # gateway has answered a heartbeat that asks for them, the cluster still has one.
        with Gateway(gw.address, auth=BasicAuth("q-grace", "")) as gateway:
            cluster = gateway.connect(name)
            client = cluster.get_client(set_as_default=False)
            try:
                futures = client.map(time.sleep, [0.5] * 200, pure=False)
                wait_for(lambda: client.run_on_scheduler(_asked) > 1, what="more workers asked")
                assert client.run_on_scheduler(_heartbeat) is True
                r = call("GET", f"{gw.address}/api/v1/clusters/{name}/workers", headers=grace)
                assert r.json()["requested"] == 1, r.body
                client.cancel(futures)
            finally:
                client.close()
                cluster.close()
        # Nothing scaled it since it was capped.
        scaled = [m for k, m in kinds_and_messages(gw, "q-grace", name) if k == "scaled"]
        assert scaled[-1] == expected[1], scaled
        r = call("POST", f"{gw.address}/api/v1/clusters/{name}/scale", {"count": 2}, grace)
        assert r.status == 429, r.body
        r = call("POST", f"{gw.address}/api/v1/clusters/{name}/adapt", {"maximum": 4}, grace)
        assert r.status == 200 and r.json()["ok"] is False, r.body
        assert "Using `maximum=1` instead" in r.json()["msg"]
        assert "is used up" in r.headers["X-Dask-Gateway-Warning"]
        r = call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=grace)
        assert r.json()["status"] == "RUNNING"  # capped, not stopped
        stop(gw, "q-grace", name)
    finally:
        finish(gw)


def test_bad_quota_settings_stop_the_gateway_with_a_clear_error(tmp_path):
    gw = GatewayProcess(
        tmp_path / "gw",
        config=write_config(tmp_path, 'c.UsageQuotas.users = {"q-alice": {"core_hour": 1}}'),
    )
    with pytest.raises(RuntimeError, match="unknown quota 'core_hour'"):
        gw.start()
    gw = GatewayProcess(
        tmp_path / "gw2", config=write_config(tmp_path / "2", 'c.UsageQuotas.period = "year"')
    )
    with pytest.raises(RuntimeError, match="period"):
        gw.start()
