"""The server's Prometheus metrics: one :class:`ServerMetrics` per app, its own registry, its own names.

What is counted, and by whom (each owner calls one method; nothing here reaches into others' state):

* every HTTP request by route template, method and status, with a latency histogram
  (:class:`modelyard.observability.middleware.Observe`);
* every gateway request that reached a target, by workspace, endpoint, model (the adapter's or
  endpoint's served name, never what a client typed: a name that resolves to nothing is counted
  only in the HTTP metrics, as a 404) and outcome, with
  prompt and completion tokens, time to first token, time per output token and duration
  (:class:`GatewayCall`, made by the gateway per request);
* requests in flight and held for a replica, and replicas by state, read from the supervisor when
  scraped (its :meth:`~modelyard.endpoints.supervisor.Supervisor.stats`);
* adapter loads (by outcome) with their latency, and unloads, counted by the supervisor; attach and
  detach latency, timed by the endpoints router.

Labels are bounded: names that exist in the registry, route templates, status codes, a few outcome
words. With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes behind one port),
``prometheus_client`` keeps the values in files there and ``/metrics`` sums every process's.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

OUTCOMES = ("ok", "client_error", "engine_error", "unavailable", "cancelled")
"""A gateway request's outcome: answered; refused for the client's mistake (4xx); the engine or the
provider failed (5xx from it, a broken stream); no replica could take it (503 from us); the client left."""

CONTENT_TYPE = CONTENT_TYPE_LATEST


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    return "client_error" if status < 500 else "engine_error"


class _Runtime(Collector):
    """Gauges read when scraped from whoever owns the runtime state (the supervisor's ``stats``)."""

    def __init__(self, stats: Callable[[], list[dict[str, Any]]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily("modelyard_requests_in_flight", "Gateway requests being answered by a replica.",
                                      labels=["workspace", "endpoint"])
        queued = GaugeMetricFamily("modelyard_requests_queued",
                                   "Gateway requests held until a replica of an endpoint scaled to zero is up.",
                                   labels=["workspace", "endpoint"])
        replicas = GaugeMetricFamily("modelyard_replicas", "Engine replicas by state.",
                                     labels=["workspace", "endpoint", "state"])
        for row in self.stats():
            key = [row["workspace"], row["endpoint"]]
            in_flight.add_metric(key, row["in_flight"])
            queued.add_metric(key, row["queued"])
            for state, count in row["replicas"].items():
                replicas.add_metric([*key, state], count)
        yield in_flight
        yield queued
        yield replicas


class ServerMetrics:
    """The app's metrics. ``enabled=False`` (``MODELYARD_METRICS=off``) makes every method a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._runtime: _Runtime | None = None
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._gateway_children: dict[tuple[str, str, str], _GatewayChildren] = {}
        r = self.registry
        self.http_requests = Counter("modelyard_http_requests", "HTTP requests by route template, method and status.",
                                     ["route", "method", "status"], registry=r)
        self.http_latency = Histogram("modelyard_http_request_duration_seconds",
                                      "HTTP request latency, to the last byte of the answer.", ["route", "method"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        labels = ["workspace", "endpoint", "model"]
        self.gateway_requests = Counter("modelyard_gateway_requests", "Gateway requests by target and outcome.",
                                        [*labels, "outcome"], registry=r)
        self.prompt_tokens = Counter("modelyard_gateway_prompt_tokens", "Prompt tokens of gateway requests.",
                                     labels, registry=r)
        self.completion_tokens = Counter("modelyard_gateway_completion_tokens",
                                         "Completion tokens of gateway requests.", labels, registry=r)
        self.ttft = Histogram("modelyard_gateway_time_to_first_token_seconds",
                              "From the request's arrival to the first token the client got.", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("modelyard_gateway_time_per_output_token_seconds",
                              "Mean time per output token after the first, per request.", labels,
                              buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.gateway_latency = Histogram("modelyard_gateway_request_duration_seconds",
                                         "Gateway request latency, to the last byte of the answer.", labels,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.adapter_loads = Counter("modelyard_adapter_loads", "Adapter loads into engine replicas, by outcome.",
                                     ["workspace", "endpoint", "outcome"], registry=r)
        self.adapter_load_latency = Histogram("modelyard_adapter_load_duration_seconds",
                                              "Time to load an adapter into one replica (copy and engine load).",
                                              ["workspace", "endpoint"], buckets=LOAD_BUCKETS, registry=r)
        self.adapter_unloads = Counter("modelyard_adapter_unloads", "Adapter unloads from engine replicas.",
                                       ["workspace", "endpoint"], registry=r)
        self.attach_latency = Histogram("modelyard_attach_duration_seconds",
                                        "Attach and detach requests, loading or unloading on every replica included.",
                                        ["action", "outcome"], buckets=LOAD_BUCKETS, registry=r)

    # ----- wiring --------------------------------------------------------------------------------

    def watch_runtime(self, stats: Callable[[], list[dict[str, Any]]]) -> None:
        """Read requests in flight, queued and replicas from ``stats`` at each scrape."""
        if self._runtime is not None:
            self.registry.unregister(self._runtime)
        self._runtime = _Runtime(stats)
        self.registry.register(self._runtime)

    def exposition(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # several worker processes: sum their files
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            if self._runtime is not None:
                registry.register(self._runtime)
            return generate_latest(registry)
        return generate_latest(self.registry)

    # ----- counting ------------------------------------------------------------------------------

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        if self.enabled:
            key = (route, method, status)
            children = self._http_children.get(key)
            if children is None:  # ``labels()`` validates and locks: once per label set, not per request
                children = self._http_children[key] = (self.http_requests.labels(route, method, str(status)),
                                                        self.http_latency.labels(route, method))
            children[0].inc()
            children[1].observe(seconds)

    def gateway(self, key: tuple[str, str, str]) -> _GatewayChildren:
        children = self._gateway_children.get(key)
        if children is None:
            children = self._gateway_children[key] = _GatewayChildren(self, key)
        return children

    def adapter_loaded(self, workspace: str, endpoint: str, ok: bool, seconds: float) -> None:
        if self.enabled:
            self.adapter_loads.labels(workspace, endpoint, "ok" if ok else "error").inc()
            if ok:
                self.adapter_load_latency.labels(workspace, endpoint).observe(seconds)

    def adapter_unloaded(self, workspace: str, endpoint: str) -> None:
        if self.enabled:
            self.adapter_unloads.labels(workspace, endpoint).inc()

    @contextlib.contextmanager
    def timed(self, action: str) -> Iterator[None]:
        """Time an attach or detach; one that raises counts as ``error``."""
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            if self.enabled:
                self.attach_latency.labels(action, "ok" if ok else "error").observe(time.perf_counter() - started)


class _GatewayChildren:
    """One target's series (workspace, endpoint, model), looked up once."""

    __slots__ = ("_metrics", "_outcomes", "completion_tokens", "key", "latency", "prompt_tokens", "tpot", "ttft")

    def __init__(self, metrics: ServerMetrics, key: tuple[str, str, str]) -> None:
        self._metrics, self.key = metrics, key
        self._outcomes: dict[str, Any] = {}
        self.latency = metrics.gateway_latency.labels(*key)
        self.prompt_tokens = metrics.prompt_tokens.labels(*key)
        self.completion_tokens = metrics.completion_tokens.labels(*key)
        self.ttft = metrics.ttft.labels(*key)
        self.tpot = metrics.tpot.labels(*key)

    def requests(self, outcome: str) -> Any:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._metrics.gateway_requests.labels(*self.key, outcome)
        return child


class GatewayCall:
    """One gateway request's measurements, finished exactly once (answer sent, stream ended or cut).

    ``first_token`` marks the first content the client got; ``finish`` records the outcome, the
    tokens (from the answer's ``usage``) and the timings in the metrics and the usage records, and
    leaves a summary for the access log line."""

    __slots__ = ("caller", "completion_tokens", "done", "endpoint", "endpoint_id", "first", "metrics", "model",
                 "prompt_tokens", "replica", "started", "status", "usage", "workspace")

    def __init__(self, metrics: ServerMetrics | None, usage: Any, workspace: str, endpoint: str,
                 endpoint_id: str | None, model: str, started: float | None = None, caller: str | None = None) -> None:
        self.metrics = metrics if metrics is not None and metrics.enabled else None
        self.usage = usage
        self.caller = caller or workspace
        """The workspace the request acted in: its usage is counted there (a public endpoint's owner
        sees its load in the metrics, labelled with the endpoint's own workspace)."""
        self.workspace, self.endpoint, self.endpoint_id, self.model = workspace, endpoint, endpoint_id, model
        self.started = started if started is not None else time.perf_counter()
        self.first: float | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.replica: str | None = None
        self.status = 0
        self.done = False

    def first_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def tokens(self, usage: Any) -> None:
        """Take ``prompt_tokens`` and ``completion_tokens`` from an OpenAI ``usage`` object."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) and prompt >= 0 else self.prompt_tokens
            self.completion_tokens = completion if isinstance(completion, int) and completion >= 0 \
                else self.completion_tokens

    def finish(self, status: int, outcome: str | None = None) -> dict[str, Any]:
        if self.done:
            return self.summary()
        self.done = True
        self.status = status
        now = time.perf_counter()
        outcome = outcome or outcome_of(status)
        if self.metrics is not None:
            m = self.metrics.gateway((self.workspace, self.endpoint, self.model))
            m.requests(outcome).inc()
            m.latency.observe(now - self.started)
            if self.prompt_tokens:
                m.prompt_tokens.inc(self.prompt_tokens)
            if self.completion_tokens:
                m.completion_tokens.inc(self.completion_tokens)
            if outcome == "ok" and self.first is not None:
                m.ttft.observe(self.first - self.started)
                if self.completion_tokens > 1:
                    m.tpot.observe((now - self.first) / (self.completion_tokens - 1))
        if self.usage is not None and self.model:
            self.usage.record(workspace=self.caller, model=self.model, endpoint_id=self.endpoint_id,
                              ok=outcome == "ok", prompt_tokens=self.prompt_tokens,
                              completion_tokens=self.completion_tokens, latency_s=now - self.started)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """What the access log line adds for a gateway request."""
        out: dict[str, Any] = {"endpoint": self.endpoint, "model": self.model, "replica": self.replica,
                               "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.first is not None:
            out["ttft_ms"] = round((self.first - self.started) * 1000, 2)
        return out


def render(metrics: ServerMetrics) -> tuple[bytes, str]:
    return metrics.exposition(), CONTENT_TYPE
