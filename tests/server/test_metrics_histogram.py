"""The lock-free inter-token histogram must expose what prometheus_client's Histogram would."""
from prometheus_client import CollectorRegistry, Histogram, Metric

from pagedserve.server.metrics import LoopHistogram

BUCKETS = (0.001, 0.0025, 0.01, 1.0, 2.5)
VALUES = [(0.0005, 1), (0.001, 2), (0.002, 1), (0.01, 3), (0.5, 1), (2.5, 1), (7.0, 2)]


def _samples(fam: Metric) -> dict[tuple, float]:
    return {(s.name, s.labels.get("le")): s.value for s in fam.samples
            if not s.name.endswith("_created")}


def test_loop_histogram_matches_prometheus_client():
    registry = CollectorRegistry()
    reference = Histogram("x_itl_seconds", "doc", ["model_name"], buckets=BUCKETS,
                          registry=registry).labels("m")
    ours = LoopHistogram("x_itl_seconds", "doc", BUCKETS)
    for value, times in VALUES:
        ours.observe(value, times)
        for _ in range(times):
            reference.observe(value)
    (expected,) = registry.collect()
    got = ours.family(["m"])
    assert _samples(got) == _samples(expected)
    assert got.type == "histogram" and {s.labels["model_name"] for s in got.samples} == {"m"}
    assert _samples(got)[("x_itl_seconds_count", None)] == 11
