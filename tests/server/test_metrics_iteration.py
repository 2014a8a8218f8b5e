"""/metrics' iteration_tokens_total: the engine's per-step histogram, as vLLM exports it."""
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from pagedserve.engine.llm_engine import ITERATION_TOKEN_BUCKETS, EngineStats
from pagedserve.server.metrics import Metrics


def scrape(stats: EngineStats) -> dict:
    config = SimpleNamespace(block_size=16, kv_cache_dtype="auto")
    engine = SimpleNamespace(stats=lambda: stats, config=config)
    text = Metrics("m", lambda: engine).render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return {(s.name, s.labels.get("le")): s.value
            for s in fams["pagedserve:iteration_tokens_total"].samples}


def test_buckets_are_cumulative_and_count_every_step():
    per_bucket = [0] * (len(ITERATION_TOKEN_BUCKETS) + 1)
    per_bucket[0], per_bucket[2], per_bucket[-1] = 5, 2, 1  # 5 one-token steps, 2 of <=16
    got = scrape(EngineStats(iteration_tokens=tuple(per_bucket), iteration_tokens_sum=20030))
    bucket = "pagedserve:iteration_tokens_total_bucket"
    assert got[(bucket, "1.0")] == 5 and got[(bucket, "8.0")] == 5 and got[(bucket, "16.0")] == 7
    assert got[(bucket, "16384.0")] == 7 and got[(bucket, "+Inf")] == 8
    assert got[("pagedserve:iteration_tokens_total_count", None)] == 8
    assert got[("pagedserve:iteration_tokens_total_sum", None)] == 20030


def test_an_engine_before_its_first_step_exports_zeros():
    got = scrape(EngineStats())
    assert got[("pagedserve:iteration_tokens_total_count", None)] == 0
