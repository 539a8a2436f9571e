"""The client's events, logs, failure reasons and start-up progress, against real gateways.

Our gateway runs with the test configuration plus an environment ``no-distributed`` whose
scheduler cannot import distributed (its Python starts without site-packages; the config
``tests/configs/broken_env_gateway_config.py``, which the sidebar's tests use too), so it
dies at start with the ImportError a user with a broken environment would see. The
public dask-gateway-server keeps no events or logs: the client says so, and starts clusters
on it as before, without progress noise.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap

import cloudpickle
import pytest
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.paths import CONFIGS
from support.upstream_server import UPSTREAM_CONFIG, upstream_server
from tornado.httpclient import HTTPClientError

from dask_gateway import BasicAuth, Gateway, GatewayClusterError, GatewayUnsupportedError

# Functions of this module run in the scheduler, which cannot import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
IMPORT_ERROR = re.compile(r"ModuleNotFoundError: No module named 'distributed'")


@pytest.fixture(scope="module")
def gateway_with_broken_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client-events")
    gw = GatewayProcess(tmp / "gw", config=CONFIGS / "broken_env_gateway_config.py")
    gw.start()
    yield gw
    code = gw.stop()
    _kill_leftovers(gw.data_dir)
    assert code == 0, gw.log()


def why(text: str) -> str:
    """The ImportError line in ``text``."""
    found = IMPORT_ERROR.search(text)
    assert found, text
    return found.group(0)


def events_until(source, kind: str, timeout: float = 60) -> list:
    """A cluster's events up to the first of ``kind``, following them with the events
    route's long-poll (no sleeping: each request returns when an event is recorded)."""
    events = source()
    while kind not in [e.kind for e in events]:
        more = source(after=events[-1].id if events else None, wait=timeout)
        assert more, f"no {kind!r} event within {timeout} s: {[e.kind for e in events]}"
        events += more
    return events


def run_client(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python (stderr a pipe, not a terminal)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
    )


def test_failed_start_names_the_import_error(gateway_with_broken_env):
    with gateway_with_broken_env.new_gateway(auth=BasicAuth("ev-broken")) as gateway:
        with pytest.raises(GatewayClusterError) as info:
            gateway.new_cluster(environment="no-distributed")
        message = str(info.value)
        first = message.splitlines()[0]
        name = re.match(r"Cluster '([0-9a-f]+)' failed to start: ", first)
        assert name, message
        assert first.endswith(": The scheduler exited before it started: " + why(first)), message
        assert "see logs" not in message
        # The last lines of the scheduler's log follow, indented; then where to read more.
        log_lines = message.splitlines()[1:-1]
        assert log_lines and all(line.startswith("    ") for line in log_lines), message
        assert why(first) in log_lines[-1]
        name = name.group(1)
        assert message.splitlines()[-1] == (
            f"(All of its history: gateway.events({name!r}); its logs: gateway.get_logs({name!r}))"
        )

        events = gateway.events(name)
        kinds = [e.kind for e in events]
        assert kinds[0] == "submitted" and kinds[-1] == "failed", kinds
        assert "starting" in kinds and "running" not in kinds
        assert events[-1].message in first
        assert why(first) in events[-1].detail
        assert why(first) in gateway.get_logs(name)["scheduler"]
        assert list(gateway.get_logs(name, component="scheduler", tail=1)) == ["scheduler"]


def test_user_events_follow_every_cluster_of_the_user(gateway_with_broken_env):
    """``Gateway.user_events``: one long-poll follows all of a user's clusters (the Jupyter
    extension's live sidebar uses it), each event naming its cluster; another user's
    events never show; ``all_users`` is for admins."""
    gw = gateway_with_broken_env
    with (
        gw.new_gateway(auth=BasicAuth("ue-alice")) as alice,
        gw.new_gateway(auth=BasicAuth("ue-bob")) as bob,
    ):
        first = alice.user_events()
        assert (first.events, first.cursor, first.done) == ([], 0, False)
        names = [alice.submit(environment="no-distributed") for _ in range(2)]
        bobs = bob.submit(environment="no-distributed")
        events, cursor = [], first.cursor
        while {e.cluster for e in events if e.kind == "failed"} != set(names):
            page = alice.user_events(after=cursor, wait=60)
            assert page.events, "no event within 60 s"
            assert page.cursor == page.events[-1].id > cursor
            events += page.events
            cursor = page.cursor
        assert {e.cluster for e in events} == set(names)  # both, and not Bob's
        assert {e.user for e in events} == {"ue-alice"}
        assert [e.id for e in events] == sorted({e.id for e in events})
        assert [e.kind for e in events if e.cluster == names[0]][0] == "submitted"
        # since: from a time rather than a cursor.
        assert alice.user_events(since=events[-1].time).events[-1].id == events[-1].id
        assert bobs in {e.cluster for e in bob.user_events().events}
        # A cluster's own history has no cluster/user (the route does not send them).
        assert {e.cluster for e in alice.events(names[0])} == {None}

        with pytest.raises(HTTPClientError) as info:
            alice.user_events(all_users=True)
        assert info.value.code == 403
        for bad in ({"after": -1}, {"wait": -1}, {"wait": float("nan")}):
            with pytest.raises(ValueError):
                alice.user_events(**bad)


def _log_on_scheduler(marker: str) -> None:
    logging.getLogger("distributed.scheduler").warning(marker)


def test_events_and_logs_of_a_running_then_stopped_cluster(gateway_with_broken_env):
    with gateway_with_broken_env.new_gateway(auth=BasicAuth("ev-running")) as gateway:
        cluster = gateway.new_cluster()
        name = cluster.name
        try:
            events = events_until(cluster.events, "running")
            kinds = [e.kind for e in events]
            assert kinds[:2] == ["submitted", "starting"], kinds
            assert kinds.index("scheduler-started") < kinds.index("running")
            assert [e.id for e in events] == sorted({e.id for e in events})
            assert events[0].time <= events[-1].time
            assert events[0].time.tzinfo is not None

            cluster.scale(1)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(1)
                marker = f"marker for the logs route of {name}"
                client.run_on_scheduler(_log_on_scheduler, marker)
            logs = cluster.get_logs()
            assert list(logs)[0] == "scheduler"
            assert marker in logs["scheduler"]
            assert [k for k in logs if k.startswith("worker:")], list(logs)
            tail = cluster.get_logs(component="scheduler", tail=3)["scheduler"]
            assert len(tail.splitlines()) <= 3
        finally:
            cluster.shutdown()

        # Stopped: its history and its logs stay readable, from a new connection too.
        with gateway_with_broken_env.new_gateway(auth=BasicAuth("ev-running")) as again:
            kinds = [e.kind for e in events_until(lambda **kw: again.events(name, **kw), "stopped")]
            assert kinds.index("stop-requested") < kinds.index("stopped")
            assert marker in again.get_logs(name)["scheduler"]
        # Someone else's cluster: the route's 403, as the other routes give.
        with gateway_with_broken_env.new_gateway(auth=BasicAuth("ev-other")) as other:
            with pytest.raises(Exception, match="lacks permissions") as info:
                other.get_logs(name)
            assert getattr(info.value, "code", None) == 403


PROGRESS_SCRIPT = """\
    import sys
    from dask_gateway import BasicAuth, Gateway, GatewayClusterError

    with Gateway({address!r}, auth=BasicAuth({user!r}, {password!r})) as gateway:
        try:
            cluster = gateway.new_cluster(**{options!r})
        except GatewayClusterError as exc:
            print("FAILED", str(exc).splitlines()[0])
        else:
            print("NAME", cluster.name)
            try:
                print("SUBMITTED", gateway.events(cluster.name)[0].message)
            except Exception as exc:
                print("EVENTS", type(exc).__name__)
            cluster.shutdown()
"""


def progress_run(address: str, user: str, options: dict, password: str = "", **env: str):
    script = PROGRESS_SCRIPT.format(address=address, user=user, password=password, options=options)
    out = run_client(script, **env)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr.splitlines()


def test_start_progress_on_stderr(gateway_with_broken_env):
    address = gateway_with_broken_env.address
    stdout, stderr = progress_run(address, "ev-progress", {}, DASK_GATEWAY__PROGRESS="true")
    name = stdout[0].removeprefix("NAME ")
    submitted = stdout[1].removeprefix("SUBMITTED ")
    prefix = f"dask-gateway: cluster {name}: "
    lines = [line for line in stderr if line.startswith("dask-gateway:")]
    assert lines == [line for line in stderr if "dask-gateway" in line], stderr
    assert all(line.startswith(prefix) for line in lines), lines
    assert lines[0] == prefix + submitted
    assert lines[1].startswith(prefix + "Starting the scheduler (+"), lines
    # The last phase is the running one: the gateway's event, or the client's own line when
    # the cluster ran before that event was stored.
    assert re.match(rf"{re.escape(prefix)}(running|Scheduler running on .*)$", lines[-1]), lines
    assert not [line for line in stderr if "Traceback" in line], stderr

    # A failed start: its phases, the failure among them, then the error.
    stdout, stderr = progress_run(
        address, "ev-progress", {"environment": "no-distributed"}, DASK_GATEWAY__PROGRESS="true"
    )
    assert stdout[0].startswith("FAILED Cluster ") and IMPORT_ERROR.search(stdout[0])
    lines = [line for line in stderr if line.startswith("dask-gateway:")]
    assert "Starting the scheduler" in lines[1], lines
    assert "The scheduler exited before it started" in lines[-1], lines

    # "auto" (the default) with stderr not a terminal: quiet.
    stdout, stderr = progress_run(address, "ev-progress", {})
    assert stdout[0].startswith("NAME ")
    assert [line for line in stderr if "dask-gateway" in line] == [], stderr


@pytest.mark.interop
@pytest.mark.timeout(600)
def test_public_server_keeps_no_events_and_shows_no_progress(tmp_path):
    password = "client-events-public"
    with upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address:
        stdout, stderr = progress_run(
            address, "alice", {}, password=password, DASK_GATEWAY__PROGRESS="true"
        )
        # The start works as before, silently; only asking for events fails, clearly.
        assert stdout[0].startswith("NAME ")
        assert stdout[1] == "EVENTS GatewayUnsupportedError"
        assert [line for line in stderr if "dask-gateway" in line or "Traceback" in line] == []

        with Gateway(address, auth=BasicAuth("alice", password)) as gateway:
            cluster = gateway.new_cluster()
            try:
                with pytest.raises(GatewayUnsupportedError) as info:
                    cluster.get_logs()
                assert str(info.value) == (
                    f"The gateway at {address} does not keep cluster logs: it has no logs "
                    "route (the public dask-gateway-server, or an older version of this one). "
                    "Its administrator can read the logs on the gateway's machine."
                )
                with pytest.raises(GatewayUnsupportedError, match="does not keep cluster events"):
                    cluster.events()
                with pytest.raises(GatewayUnsupportedError, match="does not keep cluster events"):
                    gateway.user_events(wait=1)
            finally:
                cluster.shutdown()
