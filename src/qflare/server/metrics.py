"""Prometheus metrics at ``GET /metrics`` (operator token required), with ``prometheus-client``.

Most figures are read from the server's own records when Prometheus scrapes (rounds, their durations
and aggregation times, refusals by kind and reason, devices by status, the ledger's size), so they hold
across restarts and cost nothing between scrapes. Only what leaves no record is counted as it happens:
HTTP requests by route and status with their latency, enclave calls with their latency, and QKD keys
fetched. Labels never carry device ids.

Each app has its own registry (tests build many apps in one process).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qflare.server.deps import Operator
from qflare.server.state import ServerState

__all__ = ["ServerMetrics", "install_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _RecordsCollector(Collector):
    """Figures read from the repository and the ledger at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        repo = self.state.repo
        rounds = repo.list_rounds()
        by_status = GaugeMetricFamily("qflare_rounds", "Rounds by status", labels=["status"])
        for status, n in sorted(Tally(r.status for r in rounds).items()):
            by_status.add_metric([status], n)
        yield by_status
        done = [r.metrics for r in rounds if r.status == "aggregated" and r.metrics]
        yield _histogram("qflare_round_duration_seconds", "Round duration, opened to aggregated",
                         [m["round_seconds"] for m in done if isinstance(m.get("round_seconds"), int | float)])
        yield _histogram("qflare_aggregation_seconds", "Time to aggregate a round's updates",
                         [m["aggregation_seconds"] for m in done
                          if isinstance(m.get("aggregation_seconds"), int | float)])
        accepted = CounterMetricFamily("qflare_updates_accepted", "Updates accepted")
        accepted.add_metric([], repo.count_updates())
        yield accepted
        refused = CounterMetricFamily("qflare_refusals", "Refused requests and updates by kind and reason",
                                      labels=["kind", "reason"])
        for (kind, reason), n in sorted(repo.count_events_by_reason(("request_rejected", "update_rejected")).items()):
            refused.add_metric([kind, reason or "unknown"], n)
        yield refused
        devices = GaugeMetricFamily("qflare_devices", "Registered devices by status", labels=["status"])
        for status, n in sorted(Tally(d.status for d in repo.list_devices()).items()):
            devices.add_metric([status], n)
        yield devices
        if self.state.ledger is not None:
            size = GaugeMetricFamily("qflare_ledger_entries", "Entries in the audit ledger")
            size.add_metric([], self.state.ledger.log.size())
            yield size


def _histogram(name: str, doc: str, values: list[float]) -> HistogramMetricFamily:
    buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in SECONDS_BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(sum(values)))


class ServerMetrics:
    """The live counters (the rest is read from records by :class:`_RecordsCollector`)."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qflare_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("qflare_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=SECONDS_BUCKETS, registry=self.registry)
        self.enclave_calls = Counter("qflare_enclave_calls", "Calls into the enclave by outcome", ["outcome"],
                                     registry=self.registry)
        self.enclave_latency = Histogram("qflare_enclave_call_seconds", "Enclave call latency",
                                         buckets=SECONDS_BUCKETS, registry=self.registry)
        self.qkd_keys = Counter("qflare_qkd_keys", "QKD keys fetched from the server's KME",
                                registry=self.registry)
        self.qkd_key_bits = Counter("qflare_qkd_key_bits", "QKD key bits fetched (rate() of it: the key rate used)",
                                    registry=self.registry)
        self.registry.register(_RecordsCollector(state))

    def observe_enclave(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, outcome = time.perf_counter(), "error"
            try:
                result = call(*args, **kwargs)
                outcome = "ok"
                return result
            finally:
                self.enclave_calls.labels(outcome).inc()
                self.enclave_latency.observe(time.perf_counter() - started)
        return timed

    def observe_qkd(self, lookup: Callable[[str, tuple[str, ...]], bytes]) -> Callable[[str, tuple[str, ...]], bytes]:
        def counted(device_id: str, key_ids: tuple[str, ...]) -> bytes:
            key = lookup(device_id, key_ids)
            self.qkd_keys.inc(len(key_ids))
            self.qkd_key_bits.inc(8 * len(key))
            return key
        return counted

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CountingMiddleware:
    """Counts and times every HTTP request by route and status (plain ASGI, as
    :class:`~qflare.server.request_context.RequestIdMiddleware`). The time is to the end of the answer."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what the server answers if the app raises

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI, state: ServerState) -> ServerMetrics:
    """Add ``GET /metrics`` and the request middleware; wrap the enclave and QKD calls when present."""
    metrics = ServerMetrics(state)
    app.state.metrics = metrics  # the dashboard reads the QKD key counter
    # The host's enclave client funnels every ecall through one method: time that.
    client = getattr(state.enclave, "enclave", None)
    if client is not None and callable(getattr(client, "_call", None)):
        client._call = metrics.observe_enclave(client._call)
    if state.gateway.qkd_lookup is not None:
        state.gateway.qkd_lookup = metrics.observe_qkd(state.gateway.qkd_lookup)

    app.add_middleware(_CountingMiddleware, metrics=metrics)

    @app.get("/metrics", tags=["meta"], response_class=Response, include_in_schema=True)
    def prometheus(_: Operator) -> Response:
        """Prometheus text format (scrape with the operator token as a bearer credential)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.state.metrics = metrics
    return metrics
