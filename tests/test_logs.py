"""The gateway's log: cluster names as a field on every line about a cluster, JSON lines on
request, and a log on a full disk that never stops the gateway serving."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support.waiting import wait_for

from dask_gateway_server.logs import JSONFormatter, SafeStreamHandler, TextFormatter, about

ALICE = base64.b64encode(b"alice:").decode()


def run_cluster_through_its_life(gw) -> str:
    """Create, scale up and down, and stop one cluster; its name."""
    with gw.new_gateway() as gateway:
        cluster = gateway.new_cluster()
        name = cluster.name
        cluster.scale(1)
        wait_for(lambda: _running_workers(gw, name) == 1, timeout=120, what="one worker")
        cluster.scale(0)
        wait_for(lambda: _running_workers(gw, name) == 0, timeout=120, what="no worker")
        cluster.shutdown()
        wait_for(
            lambda: gateway.get_cluster(name).status.name == "STOPPED", timeout=60, what="STOPPED"
        )
    return name


def _running_workers(gw, name: str) -> int:
    req = urllib.request.Request(
        f"{gw.address}/api/v1/clusters/{name}/workers", headers={"Authorization": "Basic " + ALICE}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["workers"]


def test_json_log_lines_name_their_cluster(fresh_gateway, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    gw = fresh_gateway(["--DaskGateway.log_style=json"])
    gw.start(timeout=120)
    name = run_cluster_through_its_life(gw)
    assert gw.stop() == 0
    lines = gw.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    about_it = [r for r in records if name in json.dumps(r)]
    for record in about_it:
        assert record.get("cluster") == name, record
    messages = " | ".join(r["message"] for r in about_it)
    for expected in (
        "Created cluster",
        "is running",
        "Starting worker",
        "/scale",
        "Stopping cluster",
        f"Cluster {name} stopped",
    ):
        assert expected in messages, messages


def test_fork_server_warnings_are_json_log_lines(fresh_gateway, monkeypatch, tmp_path):
    """The fork server reports what it could not preload to the gateway, which logs it in
    its own format: before, the fork server printed to the gateway's stderr, a line that is
    not JSON in a JSON log."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "setproctitle.py").write_text('raise ImportError("broken on purpose")\n')
    monkeypatch.setenv("PYTHONPATH", str(broken))  # passed on to the fork server
    monkeypatch.setenv("USER", "alice")
    gw = fresh_gateway(["--DaskGateway.log_style=json"])
    gw.start(timeout=120)
    run_cluster_through_its_life(gw)  # still works: the title is only cosmetic
    assert gw.stop() == 0
    records = [json.loads(line) for line in gw.log_path.read_text().splitlines()]
    warned = [r for r in records if "could not preload setproctitle" in r["message"]]
    assert warned and warned[0]["level"] == "WARNING", records
    assert "broken on purpose" in warned[0]["message"]


def test_text_log_lines_show_their_cluster(fresh_gateway, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    gw = fresh_gateway()
    gw.start(timeout=120)
    with gw.new_gateway() as gateway:
        cluster = gateway.new_cluster()
        name = cluster.name
        cluster.shutdown()
    assert gw.stop() == 0
    mentions = [line for line in gw.log_path.read_text().splitlines() if name in line]
    assert len(mentions) >= 4, mentions
    for line in mentions:
        assert f"] [cluster {name}] " in line, line


def test_formatters_and_handler_units(tmp_path):
    record = logging.LogRecord(
        "dask_gateway_server", logging.INFO, __file__, 1, "Cluster %s is running", ("abc",), None
    )
    record.__dict__.update(about("abc"))
    text = TextFormatter("[%(levelname)s %(name)s] %(message)s").format(record)
    assert text == "[INFO dask_gateway_server] [cluster abc] Cluster abc is running"
    out = json.loads(JSONFormatter().format(record))
    assert out["cluster"] == "abc" and out["message"] == "Cluster abc is running"
    assert out["level"] == "INFO" and out["logger"] == "dask_gateway_server"

    # A stream that refuses every write: lines are dropped and counted, nothing raised.
    with open("/dev/full", "w") as full:
        handler = SafeStreamHandler(full)
        handler.setFormatter(JSONFormatter())
        handler.emit(record)
        handler.emit(record)
    assert handler.lost == 2 and "No space left" in str(handler.last_error)
    # Once it can write again, the first line says what was lost.
    with open(tmp_path / "log", "w") as ok:
        handler.stream = ok
        handler.emit(record)
    first, second = (tmp_path / "log").read_text().splitlines()
    assert "2 log lines were lost" in json.loads(first)["message"]
    assert json.loads(second)["cluster"] == "abc" and handler.lost == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB filesystem (tmpfs; the tests run as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, log: Path) -> Path:
    """Fill the filesystem of ``directory`` until it has no byte left, the rest of the
    log's last page too (with empty lines)."""
    filler = directory / "filler"
    for path, chunk in ((filler, b"x" * 4096), (filler, b"x"), (log, b"\n")):
        with open(path, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    return filler


def test_full_disk_under_the_log_keeps_the_gateway_serving(fresh_gateway, tiny_disk, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    gw = fresh_gateway()
    gw.log_path = tiny_disk / "gateway.log"  # the log alone on the tiny disk
    gw.start(timeout=120)
    filler = fill(tiny_disk, gw.log_path)
    size = gw.log_path.stat().st_size
    with gw.new_gateway() as gateway:
        # Everything a user does works, and in bounded time, with no log being written.
        t0 = time.monotonic()
        cluster = gateway.new_cluster()
        name = cluster.name
        cluster.scale(1)
        wait_for(lambda: _running_workers(gw, name) == 1, timeout=120, what="a worker")
        assert [c.name for c in gateway.list_clusters()] == [name]
        cluster.shutdown()
        assert time.monotonic() - t0 < 120
        assert gw.proc.poll() is None
        assert gw.log_path.stat().st_size == size  # nothing could be written
        assert name not in gw.log()

        # Space is back: the log resumes, first saying what it lost.
        filler.unlink()
        cluster = gateway.new_cluster()
        second = cluster.name
        cluster.shutdown()
    wait_for(lambda: f"Cluster {second} stopped" in gw.log(), timeout=30, what="the log to resume")
    log = gw.log()
    assert "log lines were lost: the log could not be written" in log
    assert "No space left on device" in log
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()


def test_half_written_line_is_ended_before_the_next(tiny_disk):
    log = tiny_disk / "log"
    log.write_bytes(b"#" * 4086 + b"\n")  # 9 bytes left in the file's only page
    filler = fill(tiny_disk, tiny_disk / "unused")
    record = logging.LogRecord(
        "dask_gateway_server", logging.INFO, __file__, 1, "Cluster %s is running", ("abc",), None
    )
    record.__dict__.update(about("abc"))
    with open(log, "a") as stream:
        handler = SafeStreamHandler(stream)
        handler.setFormatter(JSONFormatter())
        handler.emit(record)  # 9 bytes of it fit
        assert handler.lost == 1 and log.stat().st_size == 4096
        filler.unlink()
        handler.emit(record)
    lines = log.read_text().splitlines()[1:]
    assert len(lines[0]) == 9  # the half line, ended
    assert "1 log lines were lost" in json.loads(lines[1])["message"]
    assert json.loads(lines[2])["cluster"] == "abc"
