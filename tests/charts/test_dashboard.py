"""The Grafana dashboard shipped with the chart queries the metrics the server exports."""

import json
import re
from pathlib import Path
from unittest.mock import MagicMock

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "pagedserve" / "files" / "grafana-dashboard.json"
METRIC = re.compile(r"pagedserve:[a-z0-9_]+")

# What the chart issue asks the dashboard to show, as metric names (DESIGN.md).
REQUIRED = {
    "pagedserve:kv_cache_usage_perc",
    "pagedserve:generation_tokens_total",
    "pagedserve:prompt_tokens_total",
    "pagedserve:num_requests_running",
    "pagedserve:num_requests_waiting",
    "pagedserve:time_to_first_token_seconds_bucket",
    "pagedserve:time_per_output_token_seconds_bucket",
    "pagedserve:e2e_request_latency_seconds_bucket",
    "pagedserve:num_preemptions_total",
    "pagedserve:prefix_cache_hits_total",
    "pagedserve:prefix_cache_queries_total",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queried_metrics() -> set[str]:
    return {
        m
        for panel in dashboard()["panels"]
        for t in panel["targets"]
        for m in METRIC.findall(t["expr"])
    }


def test_dashboard_shows_what_an_operator_watches():
    assert REQUIRED <= queried_metrics()


def test_percentile_panels_cover_p50_p90_p99():
    for panel in dashboard()["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        if any("histogram_quantile" in e for e in exprs):
            assert sorted(
                float(re.search(r"histogram_quantile\(([\d.]+)", e).group(1)) for e in exprs
            ) == [0.5, 0.9, 0.99]


def test_panels_are_well_formed():
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for panel in d["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for t in panel["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            if "model_name" not in t["expr"]:
                pytest.fail(f"{panel['title']}: query ignores the model selector: {t['expr']}")
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "model"}


def server_series() -> set[str]:
    """Series names the server's real /metrics exposition contains (engine stubbed out)."""
    metrics = pytest.importorskip(
        "pagedserve.server.metrics", reason="the server has not landed yet"
    )
    from pagedserve.engine.llm_engine import EngineStats

    engine = MagicMock()
    engine.stats.return_value = EngineStats()  # the engine before its first request
    text = metrics.Metrics("m", lambda: engine).render().decode()
    series = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        if kind == "histogram":
            series |= {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "counter":
            series.add(name if name.endswith("_total") else name + "_total")
        else:
            series.add(name)
    return series


def test_dashboard_queries_only_metrics_the_server_exports():
    exported = server_series()
    assert REQUIRED <= exported  # the list is what the server really exposes
    missing = queried_metrics() - exported
    assert not missing, f"dashboard queries metrics the server does not export: {sorted(missing)}"
