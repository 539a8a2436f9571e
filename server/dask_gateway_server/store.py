"""The state store: clusters and workers in a SQL database (SQLite file or PostgreSQL).

The database is the one source of truth; the in-memory objects are a cache of it, rebuilt by
``load()`` at start-up. SQLAlchemy is synchronous, so every call runs on one dedicated thread:
the event loop never blocks, and writes stay ordered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .models import Cluster, JobStatus, Worker

T = TypeVar("T")

metadata = sa.MetaData()

clusters_table = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Unicode(255), nullable=False, unique=True),
    sa.Column("username", sa.Unicode(255), nullable=False, index=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("target", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("token", sa.LargeBinary, nullable=False),
    sa.Column("tls_credentials", sa.LargeBinary, nullable=False),
    sa.Column("scheduler_address", sa.Unicode(255), nullable=False),
    sa.Column("dashboard_address", sa.Unicode(255), nullable=False),
    sa.Column("api_address", sa.Unicode(255), nullable=False),
    sa.Column("message", sa.UnicodeText, nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("stop_time", sa.BigInteger, nullable=True),
)

workers_table = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Unicode(255), nullable=False),
    sa.Column(
        "cluster_id",
        sa.Integer,
        sa.ForeignKey("clusters.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("target", sa.Integer, nullable=False),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("close_expected", sa.Boolean, nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("stop_time", sa.BigInteger, nullable=True),
)

#: A cluster's history for its user (events.py). No foreign key: events outlive the cluster
#: row (forgotten after ``db_cluster_max_age``) and are removed by their own retention.
events_table = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.Unicode(255), nullable=False, index=True),
    sa.Column("username", sa.Unicode(255), nullable=False, index=True),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Unicode(32), nullable=False),
    sa.Column("worker", sa.Unicode(255), nullable=True),
    sa.Column("message", sa.UnicodeText, nullable=False),
    sa.Column("detail", sa.UnicodeText, nullable=False),
    # For retention: the ends (and starts) before a time, without reading every event.
    sa.Index("ix_events_kind_time", "kind", "time"),
)

#: Accounting (usage.py): who each cluster was for, kept after the cluster row is forgotten
#: (no foreign keys, like the events) and removed only by ``usage_max_age``.
usage_clusters_table = sa.Table(
    "usage_clusters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.Unicode(255), nullable=False, unique=True),
    sa.Column("username", sa.Unicode(255), nullable=False, index=True),
    sa.Column("groups", sa.JSON, nullable=False),  # the owner's groups at creation, sorted
    sa.Column("options", sa.JSON, nullable=False),  # the options the user chose
    sa.Column("created", sa.BigInteger, nullable=False),  # ms
)

#: One row per scheduler or worker that ran: what it held (cores, bytes of memory) from
#: ``start`` to ``stop`` (ms; NULL while it runs). Usage is computed from these, never kept
#: as a running total: exact across restarts and crashes.
allocations_table = sa.Table(
    "allocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.Unicode(255), nullable=False),
    sa.Column("username", sa.Unicode(255), nullable=False),
    sa.Column("worker", sa.Unicode(255), nullable=True),  # NULL: the scheduler
    sa.Column("cores", sa.Float, nullable=False),
    sa.Column("memory", sa.BigInteger, nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("stop", sa.BigInteger, nullable=True),
    # A user's (or everyone's) allocations overlapping a period: start < until and
    # (stop IS NULL or stop > since).
    sa.Index("ix_allocations_username_start", "username", "start"),
    sa.Index("ix_allocations_start", "start"),
    # One scheduler's or worker's (opened at most once), a cluster's (closed at its end).
    sa.Index("ix_allocations_cluster_worker", "cluster", "worker"),
    # The open ones (few), for the start-up repair, without reading every allocation.
    sa.Index(
        "ix_allocations_open",
        "cluster",
        sqlite_where=sa.text("stop IS NULL"),
        postgresql_where=sa.text("stop IS NULL"),
    ),
    # The usage metrics: what still runs or stopped recently (stop IS NULL or stop >= t).
    sa.Index("ix_allocations_stop", "stop"),
)

#: The kinds that end a cluster's history: retention counts from them.
END_KINDS = ("stopped", "failed")

_CLUSTER_COLUMNS = {
    "status",
    "target",
    "count",
    "options",
    "config",
    "state",
    "scheduler_address",
    "dashboard_address",
    "api_address",
    "message",
    "start_time",
    "stop_time",
}
_WORKER_COLUMNS = {"status", "target", "state", "close_expected", "start_time", "stop_time"}

#: Scheduler and worker statuses in which the backend's start has returned and no stop is
#: recorded yet: each holds an open allocation.
_STARTED = (int(JobStatus.SUBMITTED), int(JobStatus.RUNNING), int(JobStatus.CLOSING))
_DONE = (int(JobStatus.STOPPED), int(JobStatus.FAILED))


@dataclass(frozen=True)
class Allocation:
    """What a scheduler or worker holds from ``start`` (ms): opened in the same
    transaction as the status write that records its backend start."""

    username: str
    cores: float
    memory: int
    start: int


def held(config: dict[str, Any], role: str) -> tuple[float, int]:
    """(cores, bytes of memory) a ``role`` ("scheduler" or "worker") of a cluster with
    ``config`` holds: its ``{role}_cores`` and ``{role}_memory``, 1 core and 0 bytes when
    unset (as the user limits count them)."""
    cores = config.get(f"{role}_cores")
    memory = config.get(f"{role}_memory")
    return float(1 if cores is None else cores), int(memory or 0)


@dataclass(frozen=True)
class Repaired:
    """What ``Store.repair_allocations`` changed: allocations closed, and opened."""

    closed: int = 0
    opened: int = 0


def normalize_encrypt_key(key: str | bytes) -> bytes:
    """Accept a key as 32 raw bytes or as its 44-character url-safe base64 text."""
    if isinstance(key, str):
        key = key.strip().encode()
    if len(key) == 32:  # raw bytes: any byte may be whitespace, so no stripping
        return base64.urlsafe_b64encode(key)
    try:
        raw = base64.urlsafe_b64decode(key.strip())
    except Exception:
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "Each encryption key must be 32 bytes, or their url-safe base64 encoding "
            "(for example the output of `openssl rand -base64 32`)"
        )
    return base64.urlsafe_b64encode(raw)


def load_or_create_key_file(path: str) -> bytes:
    """The key next to a default SQLite file, created readable by the gateway only."""
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except FileNotFoundError:
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


log = logging.getLogger("dask_gateway_server")


class ClusterUse(NamedTuple):
    """What one cluster used within a range, from its allocations and accounting record."""

    cluster: str
    username: str
    groups: tuple[str, ...]  # the owner's at the cluster's creation
    start_time: int  # its creation (or its first allocation's start, without a record)
    stop_time: int | None  # its scheduler's stop; None while it runs
    core_seconds: float
    memory_byte_seconds: float


#: An allocation's part of a range: (cluster, cores, memory bytes, start ms, stop ms).
Interval = tuple[str, float, int, int, int]
#: What a cluster's allocations used within one UTC day (days since the epoch): (cluster,
#: day, core-milliseconds, memory byte-milliseconds).
DaySum = tuple[str, int, float, float]
DAY_MS = 86_400_000


class UsageData(NamedTuple):
    """What ``Store.usage_between`` read."""

    #: One a cluster; None when not asked for (``by_day`` alone needs only the days).
    clusters: list[ClusterUse] | None
    #: With ``by_day``: the parts of allocations within one UTC day, summed by the database,
    days: list[DaySum]
    #: and the parts spanning midnight, to split.
    spans: list[Interval]


class StoreError(Exception):
    """The database could not be read or written."""


class StoreUnavailable(StoreError):
    """The database is down, unreachable or locked: a passing fault, worth retrying later.

    The API answers it with 503; the reconciler retries with backoff. Nothing was written.
    """


class Store:
    """Async facade over the database; every public method runs off the event loop."""

    def __init__(
        self, url: str, encrypt_keys: list[bytes], echo: bool = False, timeout: float = 10.0
    ) -> None:
        """``timeout``: seconds one operation may wait for a lock (SQLite) or a connection
        (PostgreSQL) before it fails with StoreUnavailable, so no request hangs on it."""
        if not encrypt_keys:
            raise ValueError("The state store needs at least one encryption key")
        self.n_keys = len(encrypt_keys)
        self.url = url
        self.timeout = timeout
        self.fernet = MultiFernet([Fernet(normalize_encrypt_key(k)) for k in encrypt_keys])
        # pool_pre_ping: a connection that died with a database restart is replaced on its
        # next use instead of failing the first statement after the database is back.
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
        elif url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout))}
            kwargs["pool_timeout"] = timeout
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gateway-store")
        self._down_since: float | None = None  # when the database stopped answering

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, fn, *args)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as e:
            # Connection refused or lost, database locked, pool exhausted: passing faults.
            # (Constraint violations and bad SQL are bugs and stay what they are.)
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("The gateway's database is unavailable: %s", _short(e))
            raise StoreUnavailable(
                f"The gateway's database is temporarily unavailable ({_short(e)}); "
                "nothing was changed, try again shortly"
            ) from None
        if self._down_since is not None:
            log.warning(
                "The gateway's database is available again after %.1f s",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return result

    @property
    def available(self) -> bool:
        """False from a failed operation until the next one succeeds."""
        return self._down_since is None

    async def setup(self) -> None:
        await self._run(metadata.create_all, self.engine)

    async def close(self) -> None:
        await self._run(self.engine.dispose)
        self._executor.shutdown(wait=True)

    async def rotate_keys(self) -> int:
        """Re-encrypt every stored secret with the first key, so older keys can be dropped
        from the configuration after this start. Returns how many clusters were rewritten."""
        return await self._run(self._rotate_keys)

    def _rotate_keys(self) -> int:
        c = clusters_table.c
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(c.id, c.token, c.tls_credentials)).all()
            for row in rows:
                try:
                    values = {
                        "token": self.fernet.rotate(row.token),
                        "tls_credentials": self.fernet.rotate(row.tls_credentials),
                    }
                except InvalidToken:
                    raise StoreError(
                        "Cannot decrypt data in the database: none of the encryption keys fits"
                    ) from None
                conn.execute(clusters_table.update().where(c.id == row.id).values(**values))
        return len(rows)

    # -- secrets ---------------------------------------------------------
    def _encrypt(self, data: bytes) -> bytes:
        return self.fernet.encrypt(data)

    def _decrypt(self, data: bytes) -> bytes:
        try:
            return self.fernet.decrypt(data)
        except InvalidToken:
            raise StoreError(
                "Cannot decrypt data in the database: the encryption keys changed"
            ) from None

    # -- reads -------------------------------------------------------------
    async def load(self) -> list[Cluster]:
        """Every cluster (with its workers) that is not yet forgotten."""
        return await self._run(self._load)

    def _load(self) -> list[Cluster]:
        clusters: dict[int, Cluster] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(clusters_table).order_by(clusters_table.c.id)):
                cert, _, key = self._decrypt(row.tls_credentials).partition(b";")
                clusters[row.id] = Cluster(
                    id=row.id,
                    name=row.name,
                    username=row.username,
                    token=self._decrypt(row.token).decode(),
                    options=row.options,
                    config=row.config,
                    tls_cert=cert,
                    tls_key=key,
                    status=JobStatus(row.status),
                    target=JobStatus(row.target),
                    count=row._mapping["count"],  # row.count is tuple.count to a type checker
                    state=row.state,
                    scheduler_address=row.scheduler_address,
                    dashboard_address=row.dashboard_address,
                    api_address=row.api_address,
                    message=row.message,
                    start_time=row.start_time,
                    stop_time=row.stop_time,
                )
            u = usage_clusters_table.c
            names = {c.name: c for c in clusters.values()}
            for row in conn.execute(
                sa.select(u.cluster, u.groups).where(
                    u.cluster.in_(sa.select(clusters_table.c.name).scalar_subquery())
                )
            ):
                names[row.cluster].groups = frozenset(row.groups)
            for row in conn.execute(sa.select(workers_table).order_by(workers_table.c.id)):
                cluster = clusters.get(row.cluster_id)
                if cluster is None:
                    continue
                cluster.workers[row.name] = Worker(
                    id=row.id,
                    name=row.name,
                    cluster_name=cluster.name,
                    status=JobStatus(row.status),
                    target=JobStatus(row.target),
                    state=row.state,
                    close_expected=row.close_expected,
                    start_time=row.start_time,
                    stop_time=row.stop_time,
                )
        return list(clusters.values())

    # -- writes ------------------------------------------------------------
    async def add_cluster(self, cluster: Cluster) -> None:
        """Insert ``cluster`` and its accounting record (owner, ``cluster.groups``, options)
        in one transaction."""
        values = {c: _db_value(getattr(cluster, c)) for c in _CLUSTER_COLUMNS}
        values.update(
            name=cluster.name,
            username=cluster.username,
            token=self._encrypt(cluster.token.encode()),
            tls_credentials=self._encrypt(cluster.tls_cert + b";" + cluster.tls_key),
        )
        account = {
            "cluster": cluster.name,
            "username": cluster.username,
            "groups": sorted(cluster.groups),
            "options": cluster.options,
            "created": cluster.start_time,
        }
        cluster.id = await self._run(self._insert_cluster, values, account)

    def _insert_cluster(self, values: dict, account: dict) -> int:
        with self.engine.begin() as conn:
            key = conn.execute(clusters_table.insert().values(**values)).inserted_primary_key
            assert key is not None  # a one-row INSERT always has one
            conn.execute(usage_clusters_table.insert().values(**account))
            return key[0]

    async def add_worker(self, cluster: Cluster, worker: Worker) -> None:
        values = {c: _db_value(getattr(worker, c)) for c in _WORKER_COLUMNS}
        values.update(name=worker.name, cluster_id=cluster.id)
        worker.id = await self._run(self._insert, workers_table, values)

    def _insert(self, table: sa.Table, values: dict) -> int:
        with self.engine.begin() as conn:
            key = conn.execute(table.insert().values(**values)).inserted_primary_key
            assert key is not None  # a one-row INSERT always has one
            return key[0]

    async def update_cluster(
        self,
        cluster: Cluster,
        *,
        allocate: Allocation | None = None,
        release: int | None = None,
        **changes: Any,
    ) -> None:
        """Apply ``changes`` to ``cluster`` and persist them. In the same transaction (no
        crash between them can lose or double a use): ``allocate`` opens its scheduler's
        allocation (unless it has one: a retried write opens nothing twice), ``release``
        closes every allocation of the cluster still open at that time (ms)."""
        also = None
        if allocate is not None or release is not None:
            also = _allocating(cluster.name, None, allocate, release, whole_cluster=True)
        await self._update(clusters_table, _CLUSTER_COLUMNS, cluster, changes, also)

    async def update_clusters(self, clusters: list[Cluster], **changes: Any) -> None:
        """Apply the same ``changes`` to every one of ``clusters`` and persist them in one
        transaction (the gateway's shutdown stops thousands at once: one commit, not one
        each). As ``update_cluster``: applied at once, undone if the write fails."""
        bad = set(changes) - _CLUSTER_COLUMNS
        if bad:
            raise AttributeError(f"Not stored columns: {sorted(bad)}")
        old = [{k: getattr(c, k) for k in changes} for c in clusters]
        for c in clusters:
            for k, v in changes.items():
                setattr(c, k, v)
        values = {k: _db_value(v) for k, v in changes.items()}
        ids = [c.id for c in clusters if c.id is not None]
        try:
            await self._run(self._update_rows, clusters_table, ids, values)
        except Exception:
            for c, before in zip(clusters, old, strict=True):
                for k, v in changes.items():
                    if getattr(c, k) is v:
                        setattr(c, k, before[k])
            raise

    def _update_rows(self, table: sa.Table, ids: list[int], values: dict) -> None:
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):  # bound the statement's parameters
                conn.execute(
                    table.update().where(table.c.id.in_(ids[i : i + 500])).values(**values)
                )

    async def update_worker(
        self,
        worker: Worker,
        *,
        allocate: Allocation | None = None,
        release: int | None = None,
        **changes: Any,
    ) -> None:
        """Like ``update_cluster``, for the worker's own allocation."""
        also = None
        if allocate is not None or release is not None:
            also = _allocating(worker.cluster_name, worker.name, allocate, release)
        await self._update(workers_table, _WORKER_COLUMNS, worker, changes, also)

    async def _update(
        self,
        table: sa.Table,
        columns: set[str],
        obj: Cluster | Worker,
        changes: dict[str, Any],
        also: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        bad = set(changes) - columns
        if bad:
            raise AttributeError(f"Not stored columns: {sorted(bad)}")
        # Applied at once (callers racing on the object see the new values), undone if the
        # write fails: memory must not run ahead of the database, which outlives it.
        old = {k: getattr(obj, k) for k in changes}
        for k, v in changes.items():
            setattr(obj, k, v)
        values = {k: _db_value(v) for k, v in changes.items()}
        try:
            await self._run(self._update_row, table, obj.id, values, also)
        except Exception:  # not on cancellation: the write may still happen
            for k, v in changes.items():
                if getattr(obj, k) is v:  # not changed again meanwhile
                    setattr(obj, k, old[k])
            raise

    def _update_row(
        self,
        table: sa.Table,
        id: int,
        values: dict,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            if values:
                conn.execute(table.update().where(table.c.id == id).values(**values))
            if also is not None:
                also(conn)

    async def delete_stopped_before(self, stop_time_ms: int) -> list[str]:
        """Forget clusters that stopped before ``stop_time_ms``; returns their names."""
        return await self._run(self._delete_stopped_before, stop_time_ms)

    def _delete_stopped_before(self, stop_time_ms: int) -> list[str]:
        c = clusters_table.c
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(c.id, c.name).where(c.stop_time.is_not(None), c.stop_time < stop_time_ms)
            ).all()
            ids = [r.id for r in rows]
            if ids:
                # Deleted explicitly: SQLite enforces ON DELETE CASCADE only with a pragma.
                conn.execute(workers_table.delete().where(workers_table.c.cluster_id.in_(ids)))
                conn.execute(clusters_table.delete().where(c.id.in_(ids)))
        return [r.name for r in rows]

    # -- events ------------------------------------------------------------
    async def add_event(self, values: dict[str, Any]) -> int:
        """Insert one event (``events_table``'s columns but ``id``); returns its id."""
        return await self._run(self._insert, events_table, values)

    async def add_events(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert events in one transaction (one commit for them all); their ids, in order."""
        return await self._run(self._insert_many, events_table, rows)

    def _insert_many(self, table: sa.Table, rows: list[dict[str, Any]]) -> list[int]:
        with self.engine.begin() as conn:
            if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
                # One cached statement for them all (SQLite, PostgreSQL): no compile per row.
                stmt = table.insert().returning(table.c.id, sort_by_parameter_order=True)
                return list(conn.execute(stmt, rows).scalars())
            ids = []
            for values in rows:
                key = conn.execute(table.insert().values(**values)).inserted_primary_key
                assert key is not None  # a one-row INSERT always has one
                ids.append(key[0])
            return ids

    async def query_events(
        self,
        cluster: str | None = None,
        username: str | None = None,
        after: int = 0,
        since: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Events with id > ``after`` (and time >= ``since``), oldest first, at most ``limit``;
        of one cluster, one user, or (neither given) everyone's."""
        return await self._run(self._query_events, cluster, username, after, since, limit)

    def _query_events(
        self, cluster: str | None, username: str | None, after: int, since: int | None, limit: int
    ) -> list[dict[str, Any]]:
        e = events_table.c
        query = sa.select(events_table).where(e.id > after)
        if cluster is not None:
            query = query.where(e.cluster == cluster)
        if username is not None:
            query = query.where(e.username == username)
        if since is not None:
            query = query.where(e.time >= since)
        query = query.order_by(e.id).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    async def event_owner(self, cluster: str) -> str | None:
        """Whose cluster ``cluster`` was, from its events (None: it has none)."""
        return await self._run(self._event_owner, cluster)

    def _event_owner(self, cluster: str) -> str | None:
        e = events_table.c
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(e.username).where(e.cluster == cluster).limit(1)
            ).scalar_one_or_none()

    async def delete_events_ended_before(self, time_ms: int) -> list[str]:
        """Remove the events of clusters that ended (their ``stopped`` or ``failed`` event)
        before ``time_ms``, and of clusters the store forgot whose last event is older (their
        end was never recorded, e.g. the gateway was killed); returns the clusters' names."""
        return await self._run(self._delete_events_ended_before, time_ms)

    def _delete_events_ended_before(self, time_ms: int) -> list[str]:
        e = events_table.c
        with self.engine.begin() as conn:
            ended = set(
                conn.execute(
                    sa.select(e.cluster).where(e.kind.in_(END_KINDS), e.time < time_ms).distinct()
                ).scalars()
            )
            # Without a recorded end: clusters the store forgot, submitted before the cutoff,
            # and with nothing newer (few: the others went with their end event).
            candidates = (
                sa.select(e.cluster)
                .where(
                    e.kind == "submitted",
                    e.time < time_ms,
                    e.cluster.not_in(sa.select(clusters_table.c.name)),
                )
                .scalar_subquery()
            )
            forgotten = set(
                conn.execute(
                    sa.select(e.cluster)
                    .where(e.cluster.in_(candidates))
                    .group_by(e.cluster)
                    .having(sa.func.max(e.time) < time_ms)
                ).scalars()
            )
            names = sorted(ended | forgotten)
            for i in range(0, len(names), 500):  # bound the statement's parameters
                conn.execute(events_table.delete().where(e.cluster.in_(names[i : i + 500])))
        return names

    # -- accounting ----------------------------------------------------------
    async def repair_allocations(self) -> Repaired:
        """Make the allocations agree with the rows after a crash (at start-up, before
        ``load``; idempotent, one transaction).

        - An open allocation whose scheduler or worker is done is closed at its row's
          ``stop_time`` (a worker's row missing or without one: its cluster's).
        - One whose row is forgotten (removed after ``db_cluster_max_age``) is closed at the
          last time known: the worker's end event (worker-left/failed), else the cluster's
          latest event, never before the allocation's start.
        - A started scheduler or worker (SUBMITTED, RUNNING, CLOSING) without any allocation
          gets one from its row: its cores and memory from the cluster's config, from the
          row's ``start_time`` (its creation: the backend's start was not recorded).

        The status writes carry their allocation writes in their own transactions, so
        neither happens unless the database was changed by something else (an older
        gateway, a hand edit): this is the safety net the accounting is exact with."""
        return await self._run(self._repair_allocations)

    def _repair_allocations(self) -> Repaired:
        a, c, w = allocations_table.c, clusters_table.c, workers_table.c
        closes: list[dict[str, Any]] = []
        opens: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    a.id,
                    a.cluster,
                    a.worker,
                    a.start,
                    c.id.label("cluster_id"),
                    c.status.label("cluster_status"),
                    c.stop_time.label("cluster_stop"),
                    w.id.label("worker_id"),
                    w.status.label("worker_status"),
                    w.stop_time.label("worker_stop"),
                )
                .select_from(allocations_table)
                .join(clusters_table, c.name == a.cluster, isouter=True)
                .join(
                    workers_table, sa.and_(w.cluster_id == c.id, w.name == a.worker), isouter=True
                )
                .where(a.stop.is_(None))
            ).all()
            gone = []
            for r in rows:
                cluster_done = r.cluster_status in _DONE
                if r.cluster_id is None or (r.worker is not None and r.worker_id is None):
                    if cluster_done and r.cluster_stop is not None:
                        closes.append({"id": r.id, "stop": r.cluster_stop})
                    else:
                        gone.append(r)
                elif r.worker is not None and r.worker_status in _DONE:
                    stop = r.worker_stop if r.worker_stop is not None else r.cluster_stop
                    if stop is None:
                        gone.append(r)
                    else:
                        closes.append({"id": r.id, "stop": stop})
                elif cluster_done:
                    if r.cluster_stop is None:
                        gone.append(r)
                    else:
                        closes.append({"id": r.id, "stop": r.cluster_stop})
            if gone:
                last_of_cluster, end_of_worker = _gone_times(conn, gone)
                for r in gone:
                    last = end_of_worker.get((r.cluster, r.worker)) if r.worker else None
                    if last is None:
                        last = last_of_cluster.get(r.cluster, r.start)
                    closes.append({"id": r.id, "stop": max(r.start, last)})
            has_scheduler = sa.select(a.id).where(a.cluster == c.name, a.worker.is_(None)).exists()
            for sched in conn.execute(
                sa.select(c.name, c.username, c.config, c.start_time).where(
                    c.status.in_(_STARTED), ~has_scheduler
                )
            ):
                cores, memory = held(sched.config, "scheduler")
                opens.append(
                    {
                        "cluster": sched.name,
                        "username": sched.username,
                        "worker": None,
                        "cores": cores,
                        "memory": memory,
                        "start": sched.start_time,
                        "stop": None,
                    }
                )
            has_worker = sa.select(a.id).where(a.cluster == c.name, a.worker == w.name).exists()
            for wrow in conn.execute(
                sa.select(w.name, w.start_time, c.name.label("cluster"), c.username, c.config)
                .select_from(workers_table)
                .join(clusters_table, c.id == w.cluster_id)
                .where(w.status.in_(_STARTED), c.status.not_in(_DONE), ~has_worker)
            ):
                cores, memory = held(wrow.config, "worker")
                opens.append(
                    {
                        "cluster": wrow.cluster,
                        "username": wrow.username,
                        "worker": wrow.name,
                        "cores": cores,
                        "memory": memory,
                        "start": wrow.start_time,
                        "stop": None,
                    }
                )
            if closes:
                conn.execute(
                    allocations_table.update()
                    .where(a.id == sa.bindparam("_id"))
                    .values(stop=sa.bindparam("_stop")),
                    [{"_id": x["id"], "_stop": x["stop"]} for x in closes],
                )
            if opens:
                conn.execute(allocations_table.insert(), opens)
        return Repaired(closed=len(closes), opened=len(opens))

    async def allocations_between(
        self, since_ms: int, until_ms: int, usernames: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """The allocations that overlap [since_ms, until_ms) (``usernames``: theirs only),
        each with its cluster's ``groups`` (a list) from the accounting record."""
        return await self._run(self._allocations_between, since_ms, until_ms, usernames)

    def _allocations_between(
        self, since_ms: int, until_ms: int, usernames: list[str] | None
    ) -> list[dict[str, Any]]:
        a = allocations_table.c
        u = usage_clusters_table.c
        query = (
            sa.select(allocations_table, u.groups)
            .join(usage_clusters_table, u.cluster == a.cluster, isouter=True)
            .where(a.start < until_ms, sa.or_(a.stop.is_(None), a.stop > since_ms))
        )
        if usernames is not None:
            query = query.where(a.username.in_(usernames))
        with self.engine.connect() as conn:
            return [{**row._mapping, "groups": row.groups or []} for row in conn.execute(query)]

    async def usage_between(
        self,
        since_ms: int,
        until_ms: int,
        now_ms: int,
        usernames: list[str] | None = None,
        by_day: bool = False,
        per_cluster: bool = True,
    ) -> UsageData:
        """What each cluster used within [since_ms, until_ms) (running allocations up to
        ``now_ms``; ``usernames``: theirs only), summed by the database, one row a cluster
        (``per_cluster``); with ``by_day`` also by UTC day, read in the same transaction."""
        return await self._run(
            self._usage_between, since_ms, until_ms, now_ms, usernames, by_day, per_cluster
        )

    def _usage_between(
        self,
        since_ms: int,
        until_ms: int,
        now_ms: int,
        usernames: list[str] | None,
        by_day: bool,
        per_cluster: bool = True,
    ) -> UsageData:
        a = allocations_table.c
        u = usage_clusters_table.c
        greatest, least = (
            (sa.func.max, sa.func.min)  # SQLite's scalar max(x, y) and min(x, y)
            if self.engine.dialect.name == "sqlite"
            else (sa.func.greatest, sa.func.least)
        )
        start = greatest(a.start, since_ms)
        stop = least(sa.func.coalesce(a.stop, now_ms), until_ms)
        ms = greatest(stop - start, 0)
        overlap = [a.start < until_ms, sa.or_(a.stop.is_(None), a.stop > since_ms)]
        if usernames is not None:
            overlap.append(a.username.in_(usernames))
        # Summed per cluster first, then joined with the accounting records (one lookup a
        # cluster, not one an allocation).
        sums = (
            sa.select(
                a.cluster.label("cluster"),
                sa.func.min(a.username).label("username"),
                sa.func.min(a.start).label("first_start"),
                sa.func.sum(ms * a.cores).label("core_ms"),
                sa.func.sum(ms * sa.cast(a.memory, sa.Float)).label("byte_ms"),
                # Allocations still open (count(stop) skips NULLs).
                (sa.func.count() - sa.func.count(a.stop)).label("running"),
                sa.func.max(a.stop).label("last_stop"),
            )
            .where(*overlap)
            .group_by(a.cluster)
            .subquery()
        )
        query = sa.select(
            sums,
            sa.type_coerce(u.groups, sa.UnicodeText).label("groups"),  # decoded below
            u.created,
        ).join(usage_clusters_table, u.cluster == sums.c.cluster, isouter=True)
        clusters: list[ClusterUse] | None = [] if per_cluster else None
        days: list[DaySum] = []
        spans: list[Interval] = []
        with self.engine.connect() as conn:
            if clusters is not None:
                clusters += self._cluster_uses(conn.execute(query))
            if by_day:
                # Most allocations lie within one day: summed here per cluster and day; the
                # few that span midnight come back as they are.
                day = start // DAY_MS
                one_day = sa.or_(stop <= start, (stop - 1) // DAY_MS == day)
                within = (
                    sa.select(
                        a.cluster,
                        day,
                        sa.func.sum(ms * a.cores),
                        sa.func.sum(ms * sa.cast(a.memory, sa.Float)),
                    )
                    .where(*overlap, one_day)
                    .group_by(a.cluster, day)
                )
                days = [(c, int(d), float(cm), float(bm)) for c, d, cm, bm in conn.execute(within)]
                spanning = sa.select(a.cluster, a.cores, a.memory, start, stop).where(
                    *overlap, sa.not_(one_day)
                )
                spans = [(c, cores, mem, s, e) for c, cores, mem, s, e in conn.execute(spanning)]
        return UsageData(clusters, days, spans)

    @staticmethod
    def _cluster_uses(rows: Any) -> list[ClusterUse]:
        out = []
        decoded: dict[Any, tuple[str, ...]] = {}
        for name, user, first_start, core_ms, byte_ms, running, last_stop, groups, created in rows:
            key = groups if isinstance(groups, str) or groups is None else repr(groups)
            found = decoded.get(key)
            if found is None:
                found = decoded[key] = _groups(groups)
            out.append(
                ClusterUse(
                    name,
                    user,
                    found,
                    first_start if created is None else created,
                    # Its scheduler stops last (the cluster's end closes every allocation).
                    None if running else last_stop,
                    float(core_ms or 0) / 1000,
                    float(byte_ms or 0) / 1000,
                )
            )
        return out

    async def usage_totals(
        self, now_ms: int, stopped_before: int | None = None, stopped_from: int | None = None
    ) -> list[tuple[str, tuple[str, ...], float, float]]:
        """Everything used, summed in the database: (username, groups, core-seconds, memory
        byte-seconds) per owner and set of groups; running allocations up to ``now_ms``.
        Only the allocations that stopped before ``stopped_before``, or only those that did
        not (still running, or stopped at ``stopped_from`` or later): the first part never
        changes, so the metrics read it rarely and the second at each scrape."""
        return await self._run(self._usage_totals, now_ms, stopped_before, stopped_from)

    def _usage_totals(
        self, now_ms: int, stopped_before: int | None, stopped_from: int | None
    ) -> list[tuple[str, tuple[str, ...], float, float]]:
        a = allocations_table.c
        u = usage_clusters_table.c
        ms = sa.func.coalesce(a.stop, now_ms) - a.start
        sums = sa.select(
            a.cluster.label("cluster"),
            sa.func.min(a.username).label("username"),
            sa.func.sum(ms * a.cores).label("core_ms"),
            sa.func.sum(ms * sa.cast(a.memory, sa.Float)).label("byte_ms"),
        )
        if stopped_before is not None:
            sums = sums.where(a.stop < stopped_before)
        groups = sa.cast(u.groups, sa.UnicodeText)  # PostgreSQL cannot group by json
        if stopped_from is not None:
            # Few (what runs, what stopped lately): found by the index on stop, joined
            # directly.
            # Grouped by an expression, not the column: SQLite (no statistics) would rather
            # walk the username index in GROUP BY order, every allocation ever.
            user = a.username.concat("")
            query = (
                sa.select(
                    user,
                    groups,
                    sa.func.sum(ms * a.cores),
                    sa.func.sum(ms * sa.cast(a.memory, sa.Float)),
                )
                .join(usage_clusters_table, u.cluster == a.cluster, isouter=True)
                .where(sa.or_(a.stop.is_(None), a.stop >= stopped_from))
                .group_by(user, groups)
            )
        else:
            # Many: summed per cluster first, then one lookup a cluster.
            per_cluster = sums.group_by(a.cluster).subquery()
            query = (
                sa.select(
                    per_cluster.c.username,
                    groups,
                    sa.func.sum(per_cluster.c.core_ms),
                    sa.func.sum(per_cluster.c.byte_ms),
                )
                .join(usage_clusters_table, u.cluster == per_cluster.c.cluster, isouter=True)
                .group_by(per_cluster.c.username, groups)
            )
        sums_by: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        with self.engine.connect() as conn:
            for user, text, core_ms, byte_ms in conn.execute(query):
                entry = sums_by.setdefault((user, _groups(text)), [0.0, 0.0])
                entry[0] += float(core_ms or 0) / 1000
                entry[1] += float(byte_ms or 0) / 1000
        return [(user, g, c, m) for (user, g), (c, m) in sums_by.items()]

    async def delete_usage_before(self, stop_ms: int) -> tuple[int, int]:
        """Usage retention: remove the allocations that stopped before ``stop_ms``, then
        the accounting records of clusters created before it with no allocation left (and
        not still active). Returns (allocations, clusters) removed."""
        return await self._run(self._delete_usage_before, stop_ms)

    def _delete_usage_before(self, stop_ms: int) -> tuple[int, int]:
        a = allocations_table.c
        u = usage_clusters_table.c
        c = clusters_table.c
        with self.engine.begin() as conn:
            removed = conn.execute(
                allocations_table.delete().where(a.stop.is_not(None), a.stop < stop_ms)
            ).rowcount
            active = sa.select(c.name).where(c.stop_time.is_(None))
            records = conn.execute(
                usage_clusters_table.delete().where(
                    u.created < stop_ms,
                    ~sa.exists().where(a.cluster == u.cluster),
                    u.cluster.not_in(active),
                )
            ).rowcount
        return removed, records


def _groups(value: Any) -> tuple[str, ...]:
    """A stored list of groups (JSON text, or already decoded by the driver) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = json.loads(value)
    return tuple(str(g) for g in value) if isinstance(value, list) else ()


#: Events that end a worker's history (its allocation's end if its row was forgotten).
_WORKER_END_KINDS = ("worker-left", "worker-failed")


def _allocating(
    cluster: str,
    worker: str | None,
    allocate: Allocation | None,
    release: int | None,
    whole_cluster: bool = False,
) -> Callable[[sa.Connection], None]:
    """The allocation writes that go with a status write (run in its transaction): open
    ``worker``'s (None: the scheduler's) allocation unless it already has one (each starts
    once; a write retried after a commit whose answer was lost opens nothing twice), close
    it (``whole_cluster``: every one of the cluster's) at ``release`` if still open."""
    a = allocations_table.c
    mine = sa.and_(
        a.cluster == cluster, a.worker.is_(None) if worker is None else a.worker == worker
    )

    def write(conn: sa.Connection) -> None:
        if allocate is not None:
            found = conn.execute(sa.select(a.id).where(mine).limit(1)).first()
            if found is None:
                conn.execute(
                    allocations_table.insert().values(
                        cluster=cluster,
                        username=allocate.username,
                        worker=worker,
                        cores=allocate.cores,
                        memory=allocate.memory,
                        start=allocate.start,
                        stop=None,
                    )
                )
        if release is not None:
            which = a.cluster == cluster if whole_cluster else mine
            conn.execute(
                allocations_table.update().where(which, a.stop.is_(None)).values(stop=release)
            )

    return write


def _gone_times(
    conn: sa.Connection, gone: list[Any]
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The last time known of clusters (and workers) whose rows are forgotten, from their
    events: each cluster's latest event, and each worker's end event."""
    e = events_table.c
    names = sorted({r.cluster for r in gone})
    clusters: dict[str, int] = {}
    workers: dict[tuple[str, str], int] = {}
    for i in range(0, len(names), 500):  # bound the statement's parameters
        chunk = names[i : i + 500]
        for row in conn.execute(
            sa.select(e.cluster, sa.func.max(e.time).label("last"))
            .where(e.cluster.in_(chunk))
            .group_by(e.cluster)
        ):
            clusters[row.cluster] = row.last
        for end in conn.execute(
            sa.select(e.cluster, e.worker, sa.func.max(e.time).label("last"))
            .where(e.cluster.in_(chunk), e.kind.in_(_WORKER_END_KINDS))
            .group_by(e.cluster, e.worker)
        ):
            workers[(end.cluster, end.worker)] = end.last
    return clusters, workers


def _short(e: Exception) -> str:
    """The driver's own words, without SQLAlchemy's statement dump and help link."""
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _db_value(v: Any) -> Any:
    return int(v) if isinstance(v, JobStatus) else v


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
