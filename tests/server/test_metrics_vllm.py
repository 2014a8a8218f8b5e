"""/metrics also speaks vLLM's names, for a Gateway API Inference Extension endpoint picker,
from the same snapshot as ours; and vLLM's per-request histogram family under our prefix."""
import threading
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pagedserve.engine.llm_engine import EngineStats
from pagedserve.server.metrics import Metrics

GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")


def _scrape(server) -> dict[tuple, float]:
    """{(name, frozenset of all labels)}: one scrape, model_name kept."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _pairs(sample: dict[tuple, float]) -> list[tuple[float, float]]:
    """(ours, vLLM's) per gauge, each labelled with the served name."""
    label = frozenset({("model_name", "stories260K")})
    return [(sample[("pagedserve:" + g, label)], sample[("vllm:" + g, label)]) for g in GAUGES]


def test_vllm_gauges_move_with_ours_during_a_stream(server):
    client = server.client()
    seen_busy, scrapes = [], []
    done = threading.Event()

    def stream():
        try:
            for _ in client.completions.create(model="stories260K", prompt="Once upon a time",
                                               max_tokens=300, stream=True, n=3,
                                               extra_body={"ignore_eos": True}):
                pass
        finally:
            done.set()
    t = threading.Thread(target=stream)
    t.start()
    while not done.is_set():
        sample = _scrape(server)
        scrapes.append(sample)
        pairs = _pairs(sample)
        assert all(ours == theirs for ours, theirs in pairs), pairs
        seen_busy.append(pairs[0][0] > 0 and pairs[2][0] > 0)
    t.join()
    assert any(seen_busy), "no scrape saw the stream running"
    idle = _pairs(_scrape(server))
    assert idle[0] == (0, 0) and idle[2][0] == idle[2][1]
    assert all(0 <= s[("vllm:kv_cache_usage_perc", frozenset({("model_name", "stories260K")}))]
               <= 1 for s in scrapes)


def test_cache_config_info(server):
    sample = _scrape(server)
    infos = {k: v for k, v in sample.items() if k[0] in ("vllm:cache_config_info",
                                                         "pagedserve:cache_config_info")}
    assert len(infos) == 2 and set(infos.values()) == {1.0}
    for (_, labels) in infos:
        d = dict(labels)
        assert d["block_size"] == "16" and int(d["num_gpu_blocks"]) > 0
        assert d["num_gpu_blocks"] == str(int(d["num_gpu_blocks"]))
        assert d["cache_dtype"] == "auto"  # the server runs with --kv-cache-dtype's default


def test_cache_config_info_names_the_kv_cache_dtype_as_chosen():
    """A bfloat16 cache is labelled as --kv-cache-dtype named it (engine stubbed out: a
    second server process would only repeat what the one above shows)."""
    config = SimpleNamespace(block_size=32, kv_cache_dtype="bfloat16")
    engine = SimpleNamespace(stats=lambda: EngineStats(num_gpu_blocks=7), config=config)
    text = Metrics("m", lambda: engine).render().decode()
    infos = [s.labels for fam in text_string_to_metric_families(text) for s in fam.samples
             if s.name in ("vllm:cache_config_info", "pagedserve:cache_config_info")]
    assert infos == [{"block_size": "32", "cache_dtype": "bfloat16", "num_gpu_blocks": "7"}] * 2


def test_request_histograms(server):
    client = server.client()
    before = server.metrics()
    client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=7,
                              n=2, extra_body={"ignore_eos": True})
    after = server.metrics()

    def moved(name: str) -> float:
        key = (f"pagedserve:{name}", frozenset())
        return after.get(key, 0.0) - before.get(key, 0.0)
    assert moved("request_prompt_tokens_sum") == 5 and moved("request_prompt_tokens_count") == 1
    assert moved("request_generation_tokens_sum") == 14
    assert moved("request_params_n_sum") == 2 and moved("request_params_max_tokens_sum") == 7
    for phase in ("queue", "inference", "prefill", "decode"):
        assert moved(f"request_{phase}_time_seconds_count") == 1
    assert moved("inter_token_latency_seconds_count") == 12  # 2 x (7 - 1) intervals
