"""The arithmetic behind every benchmark number: percentiles, summaries, throughput, TPOT."""
import json
import math

import pytest

from pagedserve.benchmarks import stats


def test_percentile_interpolates_between_ranks():
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 50) == pytest.approx(2.5)
    # rank (4 - 1) * 0.99 = 2.97: 3 + 0.97 * (4 - 3)
    assert stats.percentile(values, 99) == pytest.approx(3.97)


def test_percentile_matches_numpy_linear_rule():
    np = pytest.importorskip("numpy")
    values = [0.3, 7.5, 2.25, 9.0, 1.0, 4.4, 4.4]
    for q in (1, 25, 50, 90, 99):
        assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_bad_input():
    assert stats.percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        stats.percentile([1.0], 101)


def test_summarize_reports_mean_median_p99():
    s = stats.summarize([1.0, 2.0, 3.0, 10.0])
    assert s["mean"] == pytest.approx(4.0)
    assert s["median"] == pytest.approx(2.5)
    assert s["p99"] == pytest.approx(3.0 + 0.97 * 7.0)


def test_summarize_of_nothing_is_nan_and_json_null():
    s = stats.summarize([])
    assert math.isnan(s["mean"]) and math.isnan(s["p99"])
    assert json.loads(json.dumps(stats.json_safe({"itl": s})))["itl"]["median"] is None


def test_throughput_from_known_timings():
    t = stats.throughput(num_requests=10, prompt_tokens=1000, output_tokens=500, elapsed_s=4.0)
    assert t["requests_per_s"] == pytest.approx(2.5)
    assert t["output_tokens_per_s"] == pytest.approx(125.0)
    assert t["total_tokens_per_s"] == pytest.approx(375.0)
    with pytest.raises(ValueError, match="positive"):
        stats.throughput(1, 1, 1, 0.0)


def test_tpot_excludes_the_first_token():
    # first token at 0.5 s, 10 tokens done at 2.3 s: 9 gaps of 0.2 s
    assert stats.tpot(e2e_s=2.3, ttft_s=0.5, output_tokens=10) == pytest.approx(0.2)
    assert stats.tpot(1.0, 1.0, 1) is None
