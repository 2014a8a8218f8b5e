"""Prometheus metrics: vLLM's names with the `pagedserve:` prefix, label `model_name`.

Engine-wide values (KV usage, running/waiting, token and prefix-cache counters) are read from
the engine at scrape time, so they are exact and cost nothing per token. Per-request latencies
and finish reasons are observed from each request's outputs.
"""
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pagedserve.engine.outputs import RequestOutput

P = "pagedserve:"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                50.0, 60.0, 120.0, 240.0)
RATE_WINDOW_S = 10


class Metrics:
    """The server's registry. `get_engine` returns the AsyncLLMEngine, or None while loading."""

    def __init__(self, model_name: str, get_engine: Callable) -> None:
        self.model_name = model_name
        self.get_engine = get_engine
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model_name"]
        self.success = Counter(P + "request_success", "Finished requests by finish reason",
                               label + ["finished_reason"], registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token",
                              label, buckets=_TTFT_BUCKETS, registry=r).labels(model_name)
        self.tpot = Histogram(P + "time_per_output_token_seconds",
                              "Mean time per output token after the first, per request",
                              label, buckets=_TPOT_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Arrival to finish", label,
                             buckets=_E2E_BUCKETS, registry=r).labels(model_name)
        # (monotonic time, generation tokens so far), one sample a second, for the rate gauge
        self.samples: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW_S)
        r.register(_EngineCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def tick(self) -> None:
        """Called once a second to feed the generation-throughput window."""
        engine = self.get_engine()
        if engine is not None:
            self.samples.append((time.monotonic(), engine.stats().num_generation_tokens))

    def tokens_per_second(self, total: int) -> float:
        if not self.samples:
            return 0.0
        t0, n0 = self.samples[0]
        dt = time.monotonic() - t0
        return (total - n0) / dt if dt > 0 else 0.0

    def first_output(self, out: RequestOutput) -> None:
        m = out.metrics
        if m.first_token_time is not None:
            self.ttft.observe(m.first_token_time - m.arrival_time)

    def finished(self, out: RequestOutput) -> None:
        m = out.metrics
        end = m.finished_time or time.monotonic()
        self.e2e.observe(end - m.arrival_time)
        tokens = max(len(o.token_ids) for o in out.outputs)
        if tokens > 1 and m.first_token_time is not None:
            self.tpot.observe((end - m.first_token_time) / (tokens - 1))
        self.success.labels(self.model_name, out.outputs[0].finish_reason or "abort").inc()

    def aborted(self) -> None:
        self.success.labels(self.model_name, "abort").inc()


class _EngineCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        engine = self.metrics.get_engine()
        if engine is None:
            return
        label, stats = [self.metrics.model_name], engine.stats()

        def family(kind, name: str, doc: str, value: float):
            fam = kind(P + name, doc, labels=["model_name"])
            fam.add_metric(label, value)
            return fam
        yield family(GaugeMetricFamily, "num_requests_running", "Sequences in the running batch",
                     stats.num_running)
        yield family(GaugeMetricFamily, "num_requests_waiting", "Sequences waiting to be scheduled",
                     stats.num_waiting)
        yield family(GaugeMetricFamily, "kv_cache_usage_perc", "KV-cache blocks in use (0..1)",
                     stats.kv_cache_usage)
        yield family(GaugeMetricFamily, "generation_tokens_per_second",
                     f"Generated tokens per second over the last {RATE_WINDOW_S} s",
                     self.metrics.tokens_per_second(stats.num_generation_tokens))
        yield family(CounterMetricFamily, "prompt_tokens", "Prefilled prompt tokens",
                     stats.num_prompt_tokens)
        yield family(CounterMetricFamily, "generation_tokens", "Generated tokens",
                     stats.num_generation_tokens)
        yield family(CounterMetricFamily, "num_preemptions", "Preempted sequences",
                     stats.num_preemptions)
        yield family(CounterMetricFamily, "prefix_cache_queries", "Prompt tokens looked up in the "
                     "prefix cache", stats.prefix_cache_queries)
        yield family(CounterMetricFamily, "prefix_cache_hits", "Prompt tokens found in the "
                     "prefix cache", stats.prefix_cache_hits)
