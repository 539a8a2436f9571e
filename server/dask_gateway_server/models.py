"""The gateway's data: users, clusters, workers and their states.

Pure data with no I/O, so every other module can import it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

#: What a dashboard key is derived for (see ``Cluster.dashboard_key``); the scheduler
#: preload (dask_gateway/scheduler_preload.py) derives the same.
DASHBOARD_KEY_CONTEXT = b"dask-gateway dashboard key v1"

#: The most workers a cluster can be asked for: what an INTEGER column holds in every
#: database the store supports (SQLite, PostgreSQL).
MAX_WORKER_COUNT = 2**31 - 1


class ClusterStatus(enum.IntEnum):
    """The status a client sees; only the names travel on the wire."""

    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5

    @classmethod
    def from_name(cls, name: str) -> ClusterStatus:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"{name!r} is not a valid ClusterStatus") from None


class JobStatus(enum.IntEnum):
    """Internal status (and target) of a cluster or worker."""

    CREATED = 1
    SUBMITTED = 2
    RUNNING = 3
    CLOSING = 4
    STOPPED = 5
    FAILED = 6

    @property
    def is_done(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.FAILED)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class User:
    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False

    def can_access(self, cluster: Cluster) -> bool:
        return self.admin or self.name == cluster.username


class Flag:
    """What ``asyncio.Event`` offers a cluster (set, is_set, wait), but the event, with
    its queue of waiters, is made only when someone waits before it is set: a gateway keeps
    thousands of ended clusters, whose flags are set and never waited for."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()
            self._event = None  # the waiters are woken; nobody needs it any more

    async def wait(self) -> bool:
        if not self._set:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return True


@dataclass(eq=False)
class Worker:
    name: str
    cluster_name: str
    status: JobStatus = JobStatus.CREATED
    target: JobStatus = JobStatus.RUNNING
    state: dict = field(default_factory=dict)
    start_time: int = field(default_factory=now_ms)
    stop_time: int | None = None
    close_expected: bool = False
    id: int | None = None

    @property
    def is_active(self) -> bool:
        """Counts towards the cluster's worker count."""
        return self.target == JobStatus.RUNNING and not self.status.is_done

    @property
    def is_pending(self) -> bool:
        return self.is_active and self.status in (JobStatus.CREATED, JobStatus.SUBMITTED)


@dataclass(eq=False)
class Cluster:
    name: str
    username: str
    token: str
    options: dict
    config: dict
    tls_cert: bytes
    tls_key: bytes
    status: JobStatus = JobStatus.CREATED
    target: JobStatus = JobStatus.RUNNING
    count: int = 0
    state: dict = field(default_factory=dict)
    scheduler_address: str = ""
    dashboard_address: str = ""
    api_address: str = ""
    start_time: int = field(default_factory=now_ms)
    stop_time: int | None = None
    message: str = ""
    id: int | None = None
    #: The owner's groups when it was created (its accounting record in the store).
    groups: frozenset[str] = frozenset()
    # Memory only: rebuilt at start-up.
    workers: dict[str, Worker] = field(default_factory=dict)
    last_heartbeat: float = 0.0
    worker_start_failures: int = 0
    ready: Flag = field(default_factory=Flag)  # RUNNING, or ended
    ended: Flag = field(default_factory=Flag)  # final status written
    _json: tuple[tuple, str] | None = field(default=None, repr=False)

    @property
    def model_status(self) -> ClusterStatus:
        """Map (status, target) to the public status."""
        if self.status.is_done:
            return ClusterStatus[self.status.name]
        if self.target != JobStatus.RUNNING or self.status == JobStatus.CLOSING:
            return ClusterStatus.STOPPING
        if self.status == JobStatus.RUNNING:
            return ClusterStatus.RUNNING
        return ClusterStatus.PENDING

    @property
    def is_active(self) -> bool:
        return self.target == JobStatus.RUNNING

    @property
    def dashboard_key(self) -> str:
        """What the gateway's proxy sends with every request to the cluster's dashboard,
        which our scheduler preload requires: only the gateway (and the scheduler, holding
        the token) can make it, so nobody reaches a dashboard past the gateway's access
        check. Derived rather than the token itself, so a dashboard that leaks a request
        header gives away nothing that authenticates to the gateway."""
        return hmac.new(self.token.encode(), DASHBOARD_KEY_CONTEXT, hashlib.sha256).hexdigest()

    @property
    def max_workers(self) -> int | None:
        return self.config.get("cluster_max_workers")

    def active_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.is_active]

    def to_dict(self) -> dict[str, Any]:
        """The eight-key JSON every client understands; no key may be added."""
        status = self.model_status
        running = status == ClusterStatus.RUNNING
        return {
            "name": self.name,
            "dashboard_route": (
                f"/clusters/{self.name}/status" if running and self.dashboard_address else None
            ),
            "status": status.name,
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "options": self.options,
            "tls_cert": self.tls_cert.decode() if running else None,
            "tls_key": self.tls_key.decode() if running else None,
        }

    def to_json(self) -> str:
        """``to_dict()`` serialised, cached until one of the fields it shows changes: listing
        many clusters then costs a string join, not a JSON encoding of every certificate."""
        key = (self.model_status, bool(self.dashboard_address), self.stop_time)
        if self._json is None or self._json[0] != key:
            self._json = (key, json.dumps(self.to_dict()))
        return self._json[1]
