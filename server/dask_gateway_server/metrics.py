"""Prometheus metrics at ``{prefix}/metrics``: clusters and workers by status, request
latency and errors by route, and how far behind the event loop and the reconciler run.

Counts only, no user names or cluster names, so the page is safe to scrape unauthenticated
and its size does not grow with the number of users; except, when the operator turns on
``DaskGateway.usage_metrics``, the usage counters by user and group (usage.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tornado import web

from .models import ClusterStatus, JobStatus
from .store import StoreError
from .usage import Accounting

#: Seconds a scrape's usage figures are reused: scrapers (often several) and a reload of the
#: page must not each sum the whole allocations table.
USAGE_CACHE_SECONDS = 5.0

log = logging.getLogger("dask_gateway_server")


class Metrics:
    """One registry per gateway (not the process-global one), so tests can run several."""

    def __init__(
        self,
        reconciler,
        usage: Accounting | None = None,
        relay: Callable[[], Awaitable[dict[str, int] | None]] | None = None,
    ) -> None:
        """``usage``: also export the usage counters by user and group (off: None).
        ``relay``: the public port's ``relay_counts`` (handoffs, tunnels, tunnelled bytes)."""
        self.reconciler = reconciler
        self.usage = usage
        self.relay = relay
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dask_gateway_requests",
            "HTTP requests answered, by route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dask_gateway_request_duration_seconds",
            "Time to answer HTTP requests, by route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.loop_lag = Gauge(
            "dask_gateway_event_loop_lag_seconds",
            "How late the gateway's event loop ran a timer (last sample).",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "dask_gateway_reconcile_wait_seconds",
            "Time a cluster or worker waited in the reconcile queue before being handled.",
            registry=self.registry,
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.registry.register(_StateCollector(reconciler))
        self._usage = _UsageCollector()
        if usage is not None:
            self.registry.register(self._usage)
        self._relay = _RelayCollector()
        if relay is not None:
            self.registry.register(self._relay)
        self._usage_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        """Read the usage counters from the store, unless read less than
        ``USAGE_CACHE_SECONDS`` ago (concurrent scrapes share one read). A database that
        does not answer leaves the last figures: the rest of the page still comes. Also reads
        the relay counts (from the proxy process, with ``Proxy.separate_process``)."""
        if self.relay is not None:
            counts = await self.relay()
            if counts is not None:
                self._relay.counts = counts
        if self.usage is None:
            return
        async with self._usage_lock:
            if time.monotonic() - self._usage.read_at < USAGE_CACHE_SECONDS:
                return
            try:
                self._usage.totals = await self.usage.totals_by_user_group()
            except StoreError as e:
                log.warning("Usage metrics not refreshed: %s", e)
            self._usage.read_at = time.monotonic()

    def observe_request(self, handler: web.RequestHandler) -> None:
        route = type(handler).__name__
        method = handler.request.method
        self.requests.labels(method, route, str(handler.get_status())).inc()
        self.latency.labels(method, route).observe(handler.request.request_time())

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample_loop_lag())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sample_loop_lag(self, period: float = 1.0) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(period)
            self.loop_lag.set(max(0.0, time.monotonic() - start - period))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Clusters and workers by status, read from the reconciler at scrape time."""

    def __init__(self, reconciler) -> None:
        self.reconciler = reconciler

    def collect(self):
        # The ended clusters (most of them on a busy gateway) are counted as they end.
        # (One whose final status is being written is still live: counted once, here.)
        clusters = Tally(self.reconciler.ended_counts)
        clusters.update(c.model_status.name for c in list(self.reconciler.live.values()))
        family = GaugeMetricFamily(
            "dask_gateway_clusters", "Clusters by status.", labels=["status"]
        )
        for status in ClusterStatus:
            family.add_metric([status.name], clusters.get(status.name, 0))
        yield family
        workers = Tally(
            w.status.name
            for c in self.reconciler.live_clusters()
            for w in c.workers.values()
            if not w.status.is_done
        )
        family = GaugeMetricFamily(
            "dask_gateway_workers", "Live workers by status.", labels=["status"]
        )
        for status in (
            JobStatus.CREATED,
            JobStatus.SUBMITTED,
            JobStatus.RUNNING,
            JobStatus.CLOSING,
        ):
            family.add_metric([status.name], workers.get(status.name, 0))
        yield family
        yield GaugeMetricFamily(
            "dask_gateway_reconcile_queue_length",
            "Clusters and workers waiting to be reconciled.",
            value=self.reconciler.queue.qsize(),
        )


class _RelayCollector:
    """Scheduler connections of the public port: handed to local schedulers, or relayed
    (with the bytes relayed), as last read by :meth:`Metrics.refresh`."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self):
        c = self.counts
        if not c:
            return
        family = CounterMetricFamily(
            "dask_gateway_proxy_connections",
            "Client connections to schedulers: passed to a local scheduler (handoff) or "
            "relayed through the gateway (tunnel).",
            labels=["path"],
        )
        family.add_metric(["handoff"], c.get("handoffs", 0))
        family.add_metric(["tunnel"], c.get("tunnels", 0))
        yield family
        yield CounterMetricFamily(
            "dask_gateway_proxy_handoff_fallbacks",
            "Connections to a scheduler with a handoff socket that were tunnelled after all "
            "(the scheduler did not take them).",
            value=c.get("handoff_fallbacks", 0),
        )
        family = CounterMetricFamily(
            "dask_gateway_proxy_tunnel_bytes",
            "Bytes relayed by scheduler tunnels, by direction.",
            labels=["direction"],
        )
        family.add_metric(["to_scheduler"], c.get("bytes_to_scheduler", 0))
        family.add_metric(["to_client"], c.get("bytes_to_client", 0))
        yield family
        yield GaugeMetricFamily(
            "dask_gateway_proxy_open_tunnels",
            "Scheduler tunnels open now.",
            value=c.get("open_tunnels", 0),
        )


class _UsageCollector:
    """Core-seconds and memory byte-seconds by user and group, as last read (``refresh``):
    the scrape itself never waits on the database."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], tuple[float, float]] = {}
        self.read_at = float("-inf")

    def collect(self):
        cores = CounterMetricFamily(
            "dask_gateway_core_seconds",
            "Cores held by clusters times seconds, by owner and owner's group at creation "
            '("": none; a cluster of several groups counts in each); running ones up to now.',
            labels=["user", "group"],
        )
        memory = CounterMetricFamily(
            "dask_gateway_memory_byte_seconds",
            "Bytes of memory held by clusters times seconds, by owner and group (as "
            "dask_gateway_core_seconds_total).",
            labels=["user", "group"],
        )
        for (user, group), (core_seconds, byte_seconds) in sorted(self.totals.items()):
            cores.add_metric([user, group], core_seconds)
            memory.add_metric([user, group], byte_seconds)
        yield cores
        yield memory


class MetricsHandler(web.RequestHandler):
    async def get(self) -> None:
        metrics = self.settings["metrics"]
        await metrics.refresh()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.render())
