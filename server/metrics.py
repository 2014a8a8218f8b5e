"""Prometheus metrics: vLLM's names with the `pagedserve:` prefix, label `model_name`.

Engine-wide values (KV usage, running/waiting, token and prefix-cache counters) are read from
the engine at scrape time, so they are exact and cost nothing per token. Per-request latencies
and finish reasons are observed from each request's outputs.
"""
import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from pagedserve.engine.llm_engine import ITERATION_TOKEN_BUCKETS
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.sampling_params import SamplingParams

P = "pagedserve:"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                50.0, 60.0, 120.0, 240.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                  100000)
_N_BUCKETS = (1, 2, 5, 10, 20)
RATE_WINDOW_S = 10
VLLM = "vllm:"  # the names an Inference Extension endpoint picker reads by default


class LoopHistogram:
    """A histogram observed from the event loop's thread only, so without locks. It takes one
    observation per streamed token (inter-token latency): prometheus_client's takes a lock
    for the sum and one for the bucket each time, ~2.5 us a token in a streaming server."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.bounds = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value` (le: value <= bound, as Prometheus counts)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def family(self, label: list[str]) -> HistogramMetricFamily:
        return histogram_family(self.name, self.doc, label, self.bounds, self.counts, self.sum)


def histogram_family(name: str, doc: str, label: list[str], bounds: Sequence[float],
                     counts: Sequence[int], total: float) -> HistogramMetricFamily:
    """A histogram for exposition from per-bucket counts (the last one above every bound),
    its buckets labelled as prometheus_client labels its own."""
    fam = HistogramMetricFamily(name, doc, labels=["model_name"])
    les = [floatToGoString(b) for b in bounds] + ["+Inf"]
    fam.add_metric(label, list(zip(les, itertools.accumulate(counts))), total)
    return fam


class _RequestHistograms:
    """vLLM's per-request histograms: sizes, sampling parameters and the phases' times."""

    def __init__(self, r: CollectorRegistry, model: str) -> None:
        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(P + name, doc, ["model_name"], buckets=buckets,
                             registry=r).labels(model)
        self.prompt = hist("request_prompt_tokens", "Prompt tokens per request", _TOKEN_BUCKETS)
        self.generation = hist("request_generation_tokens", "Generated tokens per request",
                               _TOKEN_BUCKETS)
        self.n = hist("request_params_n", "The n of each request", _N_BUCKETS)
        self.max_tokens = hist("request_params_max_tokens", "The max_tokens of each request",
                               _TOKEN_BUCKETS)
        self.itl = LoopHistogram(P + "inter_token_latency_seconds",
                                 "Time between output tokens", _TPOT_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Arrival to first scheduled",
                          _E2E_BUCKETS)
        self.inference = hist("request_inference_time_seconds", "First scheduled to finish",
                              _E2E_BUCKETS)
        self.prefill = hist("request_prefill_time_seconds", "First scheduled to first token",
                            _E2E_BUCKETS)
        self.decode = hist("request_decode_time_seconds", "First token to finish", _E2E_BUCKETS)

    def observe(self, out: RequestOutput, params: SamplingParams | None, end: float,
                num_tokens: int) -> None:
        m = out.metrics
        self.prompt.observe(len(out.prompt_token_ids))
        self.generation.observe(num_tokens)
        if params is not None:
            self.n.observe(params.n)
            self.max_tokens.observe(params.max_tokens or 0)
        if m.first_scheduled_time is not None:
            self.queue.observe(m.first_scheduled_time - m.arrival_time)
            self.inference.observe(end - m.first_scheduled_time)
            if m.first_token_time is not None:
                self.prefill.observe(m.first_token_time - m.first_scheduled_time)
        if m.first_token_time is not None:
            self.decode.observe(end - m.first_token_time)


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
        self.requests = _RequestHistograms(r, model_name)
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

    def finished(self, out: RequestOutput, params: SamplingParams | None = None,
                 num_tokens: list[int] | None = None) -> None:
        """A request ended; `num_tokens` per sequence (a stream's last output is only its
        last delta), else counted from `out`."""
        m = out.metrics
        end = m.finished_time or time.monotonic()
        self.e2e.observe(end - m.arrival_time)
        if num_tokens is None:
            num_tokens = [len(o.token_ids) for o in out.outputs]
        tokens = max(num_tokens)
        if tokens > 1 and m.first_token_time is not None:
            self.tpot.observe((end - m.first_token_time) / (tokens - 1))
        self.success.labels(self.model_name, out.outputs[0].finish_reason or "abort").inc()
        self.requests.observe(out, params, end, sum(num_tokens))

    def inter_token(self, seconds: float, num_tokens: int) -> None:
        """`num_tokens` arrived `seconds` after the previous ones: each waited its share."""
        self.requests.itl.observe(seconds / num_tokens, num_tokens)

    def aborted(self) -> None:
        self.success.labels(self.model_name, "abort").inc()


def _gauges(prefix: str, label: list[str], stats, config):
    """Running/waiting/KV usage and cache_config_info, under `prefix` (ours or vLLM's);
    `config` is the engine's (block_size, kv_cache_dtype)."""
    for name, doc, value in (
            ("num_requests_running", "Sequences in the running batch", stats.num_running),
            ("num_requests_waiting", "Sequences waiting to be scheduled", stats.num_waiting),
            ("kv_cache_usage_perc", "KV-cache blocks in use (0..1)", stats.kv_cache_usage)):
        fam = GaugeMetricFamily(prefix + name, doc, labels=["model_name"])
        fam.add_metric(label, value)
        yield fam
    # cache_dtype as the user chose it ("auto" stays "auto"), as vLLM labels it
    info = GaugeMetricFamily(prefix + "cache_config_info", "The KV cache's configuration",
                             labels=["block_size", "cache_dtype", "num_gpu_blocks"])
    info.add_metric([str(config.block_size), str(config.kv_cache_dtype),
                     str(stats.num_gpu_blocks)], 1)
    yield info


def _iteration_tokens(label: list[str], stats) -> HistogramMetricFamily:
    """Tokens per engine step, from the engine's own per-step counts (vLLM's histogram)."""
    counts = stats.iteration_tokens or (0,) * (len(ITERATION_TOKEN_BUCKETS) + 1)
    return histogram_family(P + "iteration_tokens_total", "Tokens run per engine step", label,
                            ITERATION_TOKEN_BUCKETS, counts, stats.iteration_tokens_sum)


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
        for prefix in (P, VLLM):  # one snapshot: both families agree at every scrape
            yield from _gauges(prefix, label, stats, engine.config)
        yield family(GaugeMetricFamily, "generation_tokens_per_second",
                     f"Generated tokens per second over the last {RATE_WINDOW_S} s",
                     self.metrics.tokens_per_second(stats.num_generation_tokens))
        yield _iteration_tokens(label, stats)
        yield self.metrics.requests.itl.family(label)
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
