"""The built-in engine's ``/metrics``, under vLLM's metric names, so tools built for vLLM read it unchanged.

What the engine has, it exposes as vLLM does: requests running and waiting, the LoRA info gauge
(``vllm:lora_requests_info`` with ``running_lora_adapters``, ``waiting_lora_adapters`` and
``max_lora`` labels, its value the time of the scrape), prompt and generation token counters, and
histograms of time to first token, inter-token latency, end-to-end latency and tokens per request.
Gauges are read from the engine when scraped; the rest is counted by :class:`RequestTimer` as each
request's events arrive. Every series carries ``model_name`` (the served name), as vLLM's do; no
label holds a request id or free text, so the number of series stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# vLLM's own bucket edges (seconds), so dashboards made for it bin the same way
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def _snapshot(items: Iterable[Any]) -> list[Any]:
    """A copy of a list or deque the engine thread may be changing while we read it."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:  # "deque mutated during iteration": read again
            continue
    return []


def _adapters(generations: Iterable[Any]) -> str:
    return ",".join(sorted({g.adapter for g in generations if g.adapter}))


class _EngineState(Collector):
    """Gauges read from the engine at scrape time (nothing to keep in step with it)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        name = self.engine.served_name
        running, waiting = _snapshot(self.engine.running), _snapshot(self.engine.pending)
        family = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model execution batches.",
                                   labels=["model_name"])
        family.add_metric([name], len(running))
        yield family
        family = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                   labels=["model_name"])
        family.add_metric([name], len(waiting))
        yield family
        family = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                   labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        family.add_metric([str(self.engine.max_loras), _adapters(waiting), _adapters(running)], time.time())
        yield family
        family = GaugeMetricFamily("modelyard_engine_lora_resident", "Adapters loaded in the batched LoRA weights.",
                                   labels=["model_name"])
        # (slots of unloaded adapters waiting to be retired are kept under a name with NULs: not counted)
        family.add_metric([name], sum(1 for n in _snapshot(self.engine.resident) if "\0" not in n))
        yield family
        family = GaugeMetricFamily("modelyard_engine_lora_loaded", "Adapters registered with the engine.",
                                   labels=["model_name"])
        family.add_metric([name], len(_snapshot(self.engine.adapters)))
        yield family
        counter = CounterMetricFamily("modelyard_engine_lora_slot_loads", "Adapters written into a slot of the "
                                      "batched LoRA weights.", labels=["model_name"])
        counter.add_metric([name], getattr(self.engine, "slot_loads", 0))
        yield counter
        counter = CounterMetricFamily("modelyard_engine_lora_evictions", "Resident adapters pushed out of their "
                                      "slot (least recently used) to make room for another.", labels=["model_name"])
        counter.add_metric([name], getattr(self.engine, "evictions", 0))
        yield counter
        prefix = getattr(self.engine, "prefix", None)
        for metric, text, attribute in (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", "queried"),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", "hits"),
        ):
            counter = CounterMetricFamily(metric, text, labels=["model_name"])
            counter.add_metric([name], getattr(prefix, attribute, 0))
            yield counter


class EngineMetrics:
    """One engine's metrics, in a registry of its own (an engine process serves one model)."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineState(engine))
        name = engine.served_name
        labels = ["model_name"]

        def counter(metric: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(metric, doc, labels + list(extra), registry=self.registry)

        def histogram(metric: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(metric, doc, labels, buckets=buckets, registry=self.registry).labels(name)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.").labels(name)
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.").labels(name)
        self._success = counter("vllm:request_success", "Count of successfully processed requests.",
                                ("finished_reason",))
        self.name = name
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             E2E_BUCKETS)
        self.prompt_len = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                    TOKEN_BUCKETS)
        self.generation_len = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                        TOKEN_BUCKETS)

    def success(self, reason: str) -> None:
        self._success.labels(self.name, reason).inc()

    def timer(self, prompt_tokens: int) -> RequestTimer:
        return RequestTimer(self, prompt_tokens)


class RequestTimer:
    """Times one generation from its events. ``mark`` runs on the engine thread as each event is
    emitted (so the times are the engine's, not the event loop's); ``finish`` runs once it is done."""

    __slots__ = ("last", "metrics", "prompt", "started")

    def __init__(self, metrics: EngineMetrics, prompt_tokens: int) -> None:
        self.metrics = metrics
        self.prompt = prompt_tokens
        self.started = time.perf_counter()
        self.last: float | None = None

    def _prefilled(self) -> None:
        self.metrics.prompt_tokens.inc(self.prompt)
        self.metrics.prompt_len.observe(self.prompt)

    def mark(self, kind: str) -> None:
        if kind != "text":
            return
        now = time.perf_counter()
        if self.last is None:
            self._prefilled()
            self.metrics.ttft.observe(now - self.started)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def finish(self, completion_tokens: int, reason: str | None) -> None:
        if self.last is None:  # done without a visible token (e.g. max_tokens 1 with a held-back byte)
            self._prefilled()
        self.metrics.e2e.observe(time.perf_counter() - self.started)
        self.metrics.generation_tokens.inc(completion_tokens)
        self.metrics.generation_len.observe(completion_tokens)
        if reason in ("stop", "length", "abort"):
            self.metrics.success(reason)
