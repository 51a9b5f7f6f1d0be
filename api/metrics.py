"""Prometheus metrics of the service (`GET /metrics`): requests and latency by route, retrieval and generation
latency, tokens, feedback by kind, jobs by state, experiences in memory; and, for an admin (tenant names are
not everyone's to read), memory size per tenant and each live canary's arms and e-values while tenants are few."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from logmem.memory.vocabulary import CANARY_ARMS, JOB_STATUSES
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .runtime import CanaryView, Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
# answers of a 135M model on 2 CPU cores take 0.1-10 s; a GPU server answers in tens of ms
GENERATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_TENANT_LABELS = 50  # past this many tenants, per-tenant memory sizes are left out (label cardinality)


class Metrics:
    """The service's metrics, in a registry of their own (two apps in one process never collide)."""

    def __init__(self, runtime: Runtime) -> None:
        disable_created_metrics()  # the `_created` twin of every series only doubles the scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("logmem_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("logmem_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=REQUEST_BUCKETS, registry=r)
        self.retrieval = Histogram("logmem_retrieval_duration_seconds", "embedding + search per answer",
                                   buckets=REQUEST_BUCKETS, registry=r)
        self.generation = Histogram("logmem_generation_duration_seconds", "model generation per answer",
                                    buckets=GENERATION_BUCKETS, registry=r)
        self.tokens = Counter("logmem_tokens", "tokens processed, by kind (prompt, completion, memory)", ["kind"],
                              registry=r)
        self.feedback = Counter("logmem_feedback", "feedback events taken, by kind", ["kind"], registry=r)
        r.register(_StoreCollector(runtime))
        self.tenants = CollectorRegistry()  # the series that name tenants, rendered only when `per_tenant`
        self.tenants.register(_TenantCollector(runtime))

    def observe_answer(self, answer: Any) -> None:
        reply = answer.reply
        self.retrieval.observe(reply.retrieval_ms / 1e3)
        self.generation.observe(reply.model_ms / 1e3)
        self.tokens.labels("prompt").inc(reply.prompt_tokens)
        self.tokens.labels("memory").inc(reply.memory_tokens)
        self.tokens.labels("completion").inc(answer.completion_tokens)

    def render(self, *, per_tenant: bool = False) -> bytes:
        """The Prometheus text: the aggregate series, and with `per_tenant` those labelled by tenant."""
        return generate_latest(self.registry) + (generate_latest(self.tenants) if per_tenant else b"")

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Pure ASGI middleware: counts and times every HTTP request under its route's path template."""
        async def wrapped(scope: Scope, receive: Callable[[], Awaitable[Message]],
                          send: Callable[[Message], Awaitable[None]]) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started, status = time.perf_counter(), 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.requests.labels(route, scope["method"], str(status)).inc()
                self.latency.labels(route, scope["method"]).observe(time.perf_counter() - started)

        return wrapped


class _StoreCollector(Collector):
    """Read at scrape time from SQL: jobs by state, experiences in memory (all tenants together)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Any:
        jobs = GaugeMetricFamily("logmem_jobs", "consolidation jobs by state", labels=["state"])
        counts = {s: 0 for s in JOB_STATUSES}
        for job in self.runtime.store.jobs():
            counts[job.status] = counts.get(job.status, 0) + 1
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("logmem_experiences", "experiences in memory, all tenants",
                                value=sum(self.runtime.store.experience_counts().values()))


class _TenantCollector(Collector):
    """Read at scrape time from SQL, while tenants are few (label cardinality): experiences per tenant; per live
    canary, each arm's rated conversations and the sum of their outcomes, and the e-value in each direction."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Any:
        sizes = self.runtime.store.experience_counts()
        if len(sizes) <= MAX_TENANT_LABELS:
            size = GaugeMetricFamily("logmem_memory_experiences", "experiences in memory per tenant", labels=["tenant"])
            for tenant, n in sizes.items():
                size.add_metric([tenant], n)
            yield size
            yield from _canary_series(self.runtime.live_canaries(sorted(sizes)))


def _canary_series(live: list[CanaryView]) -> Any:
    """The live canaries' series: a good-outcome rate is good / outcomes; the verdict needs an e-value at its
    threshold (1 / alpha: 20 by default)."""
    outcomes = GaugeMetricFamily("logmem_canary_outcomes", "rated conversations of a live canary's arm",
                                 labels=["tenant", "arm"])
    good = GaugeMetricFamily("logmem_canary_good", "the sum of the outcomes (in [0, 1]) of a live canary's arm",
                             labels=["tenant", "arm"])
    evalue = GaugeMetricFamily("logmem_canary_evalue", "a live canary's e-value against 'not better' (better) and "
                               "'not worse' (worse)", labels=["tenant", "direction"])
    for view in live:
        tenant = view.canary.tenant
        for arm in CANARY_ARMS:
            counts = view.canary.arms.get(arm, {})
            outcomes.add_metric([tenant, arm], counts.get("n", 0.0))
            good.add_metric([tenant, arm], counts.get("good", 0.0))
        decision = view.decision or {}
        evalue.add_metric([tenant, "better"], decision.get("e_better", 1.0))
        evalue.add_metric([tenant, "worse"], decision.get("e_worse", 1.0))
    yield from (outcomes, good, evalue)
