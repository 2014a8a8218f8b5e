"""The arithmetic of the benchmarks: percentiles, latency summaries and throughput."""
import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], percentiles: Sequence[float] = (50, 99)) -> dict:
    """mean, median and the asked percentiles (keys 'mean', 'median', 'p99', ...).

    An empty list (e.g. no inter-token latencies when every output is one token) gives NaN so
    the report still prints a row; JSON output turns NaN into null.
    """
    if not values:
        return {"mean": math.nan, "median": math.nan, **{f"p{q:g}": math.nan for q in percentiles}}
    out = {"mean": sum(values) / len(values), "median": percentile(values, 50)}
    out.update({f"p{q:g}": percentile(values, q) for q in percentiles})
    return out


def throughput(num_requests: int, prompt_tokens: int, output_tokens: int,
               elapsed_s: float) -> dict:
    """Requests/s, output tokens/s and total (prompt + output) tokens/s over a wall time."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_s!r}")
    return {"elapsed_s": elapsed_s, "num_requests": num_requests,
            "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "requests_per_s": num_requests / elapsed_s,
            "output_tokens_per_s": output_tokens / elapsed_s,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed_s}


def tpot(e2e_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """Time per output token after the first; None for a single-token output."""
    if output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


def json_safe(obj):
    """NaN and inf become None so --output-json writes strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
