"""ClusterLogs in process, with a backend whose logs are bytes in memory: the caps and line
cuts, the keeping (newest workers, continuous offsets), forgetting. No subprocess."""

from __future__ import annotations

import os
import stat

from dask_gateway_server.backends.base import Backend, LogChunk
from dask_gateway_server.cluster_logs import ClusterLogs, _trim, last_lines_start
from dask_gateway_server.models import Cluster, JobStatus, Worker


class MemoryBackend(Backend):
    """Logs in memory; ``oldest_first``: from an offset, the oldest bytes (as a backend may
    read), which ClusterLogs must turn into the newest."""

    def __init__(self, oldest_first: bool = False) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.oldest_first = oldest_first

    async def log_components(self, cluster: Cluster) -> list[str]:
        return list(self.files)

    async def read_log(
        self, cluster: Cluster, component: str, offset: int | None, limit: int
    ) -> LogChunk | None:
        data = self.files.get(component)
        if data is None:
            return None
        if offset is None:
            start = max(0, len(data) - limit)
        elif self.oldest_first:
            start = min(offset, len(data))
            return LogChunk(data[start : start + limit], start, len(data))
        else:
            start = min(max(offset, len(data) - limit), len(data))
        return LogChunk(data[start:], start, len(data))


def cluster(name: str = "c0ffee") -> Cluster:
    c = Cluster(name, "alice", "t", {}, {}, b"", b"")
    for i in range(5):
        c.workers[f"w{i}"] = Worker(f"w{i}", name, start_time=i)
    return c


def lines(prefix: str, n: int) -> bytes:
    return b"".join(f"{prefix}-{i:04d}\n".encode() for i in range(n))


def test_trim_cuts_at_a_line_start():
    assert _trim(b"ab\ncd\nef\n", 0, 100, True) == (b"ab\ncd\nef\n", 0)
    assert _trim(b"ab\ncd\nef\n", 10, 100, False) == (b"cd\nef\n", 13)  # first line partial
    assert _trim(b"ab\ncd\nef\n", 10, 100, True) == (b"ab\ncd\nef\n", 10)
    assert _trim(b"ab\ncd\nef\n", 0, 5, True) == (b"ef\n", 6)  # newest, from a line
    assert _trim(b"abcdefgh\n", 0, 4, True) == (b"fgh\n", 5)  # one long line: cut inside
    assert last_lines_start(b"a\nb\nc\n", 2) == 2
    assert last_lines_start(b"a\nb\nc", 1) == 4
    assert last_lines_start(b"a\nb\n", 5) == 0


async def test_live_reads_are_capped_newest_first(tmp_path):
    for oldest_first in (False, True):
        backend = MemoryBackend(oldest_first)
        backend.files["scheduler"] = lines("S", 1000)  # 7,000 bytes
        logs = ClusterLogs(backend, str(tmp_path / "kept"), max_bytes=700)
        c = cluster()
        chunk = await logs.read(c, "scheduler")
        assert chunk is not None and len(chunk.data) <= 700
        assert chunk.data.startswith(b"S-") and chunk.data.endswith(b"S-0999\n")
        assert chunk.end == 7000 and chunk.start == 7000 - len(chunk.data)
        again = await logs.read(c, "scheduler", offset=0)
        assert again == chunk  # from an old offset, still the newest
        same = await logs.read(c, "scheduler", offset=6930)
        assert same is not None and same.data == lines("S", 1000)[6930:]  # S-0990 on
        assert same.start == 6930 and same.end == 7000
        assert await logs.read(c, "worker:w9") is None


async def test_incomplete_utf8_waits_for_the_rest(tmp_path):
    backend = MemoryBackend()
    backend.files["scheduler"] = "héllo\n€".encode()[:-1]  # the euro sign half written
    logs = ClusterLogs(backend, str(tmp_path / "kept"))
    c = cluster()
    chunk = await logs.read(c, "scheduler")
    assert chunk is not None and chunk.data == "héllo\n".encode()
    backend.files["scheduler"] = "héllo\n€\n".encode()
    rest = await logs.read(c, "scheduler", offset=chunk.end)
    assert rest is not None and rest.data == "€\n".encode()


async def test_keep_newest_workers_with_continuous_offsets(tmp_path):
    backend = MemoryBackend()
    backend.files["scheduler"] = lines("S", 1000)
    for i in range(5):
        backend.files[f"worker:w{i}"] = lines(f"W{i}", 10)
    logs = ClusterLogs(backend, str(tmp_path / "kept"), max_bytes=700, max_workers=2)
    c = cluster()
    live = await logs.read(c, "scheduler", offset=6930)
    c.target = JobStatus.STOPPED  # only a stop keeps logs
    await logs.keep(c)
    del backend.files["scheduler"]  # the backend removed its files
    assert await logs.components(c) == ["scheduler", "worker:w3", "worker:w4"]
    kept = await logs.read(c, "scheduler")
    assert kept is not None and kept.end == 7000 and len(kept.data) <= 700
    assert kept.data.startswith(b"S-") and kept.data.endswith(b"S-0999\n")
    # A reader's offset from the live log goes on in the kept one.
    assert live is not None
    assert await logs.read(c, "scheduler", offset=live.start) == live
    assert (await logs.read(c, "scheduler", offset=7000)) == LogChunk(b"", 7000, 7000)
    before = await logs.read(c, "scheduler", offset=0)  # before the oldest kept byte
    assert before == kept
    assert await logs.tail_lines(c, "worker:w4", 2) == "W4-0008\nW4-0009\n"
    assert await logs.read(c, "worker:w0") is None
    # Kept again (a stop retried): nothing changes.
    backend.files["scheduler"] = b"other\n"
    await logs.keep(c)
    assert await logs.read(c, "scheduler") == kept

    folder = tmp_path / "kept" / c.name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(os.listdir(folder)) == [
        "index.json",
        "scheduler.log",
        "worker-w3.log",
        "worker-w4.log",
    ]
    # A fresh ClusterLogs (a gateway restart) finds them, by name once forgotten.
    again = ClusterLogs(backend, str(tmp_path / "kept"), max_bytes=700)
    assert await again.owner(c.name) == "alice"
    assert await again.components(c.name) == ["scheduler", "worker:w3", "worker:w4"]
    assert await again.read(c.name, "scheduler") == kept
    assert await again.kept_before(2**62) == [c.name]
    await again.forget([c.name, "../etc"])
    assert not folder.exists()
    assert await again.owner(c.name) is None and await again.read(c.name, "scheduler") is None


async def test_wait_returns_when_the_log_grows_or_the_cluster_ends(tmp_path):
    import asyncio

    backend = MemoryBackend()
    backend.files["scheduler"] = b"one\n"
    logs = ClusterLogs(backend, str(tmp_path / "kept"), poll_interval=0.01)
    c = cluster()

    async def grow() -> None:
        await asyncio.sleep(0.05)
        backend.files["scheduler"] += b"two\n"

    task = asyncio.create_task(grow())
    chunk = await logs.read_wait(c, "scheduler", 4, timeout=30)
    await task
    assert chunk == LogChunk(b"two\n", 4, 8)

    async def end() -> None:
        await asyncio.sleep(0.05)
        c.status = JobStatus.STOPPED
        c.ended.set()

    task = asyncio.create_task(end())
    chunk = await logs.read_wait(c, "scheduler", 8, timeout=30)
    await task
    assert chunk == LogChunk(b"", 8, 8) and logs.done(c)


async def test_a_cluster_without_logs_gets_no_directory(tmp_path):
    logs = ClusterLogs(MemoryBackend(), str(tmp_path / "kept"))
    c = cluster()
    c.target = JobStatus.STOPPED
    await logs.keep(c)
    assert not (tmp_path / "kept" / c.name).exists()
    assert await logs.owner(c.name) is None and await logs.components(c) == []
