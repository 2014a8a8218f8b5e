"""scripts/gpu_check.sh --cpu-dry-run: every part of the GPU check runs on CPU at its smallest
shapes and the report has the structure and figures a GPU run fills in, so the script cannot
rot between the rare runs on a lent GPU machine."""
import json
import os
import subprocess
import sys

import pytest

from pagedserve.benchmarks import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), str(out),
                           "--cpu-dry-run"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), timeout=600,
                          check=False)
    with open(out / "report.json") as f:
        return proc, json.load(f), (out / "log.txt").read_text()


@pytest.mark.slow
def test_every_part_runs_on_cpu(dry_run):
    proc, report, log = dry_run
    assert report["mode"] == "cpu-dry-run"
    assert list(report["parts"]) == [name for name, _ in gpu_check.PARTS]
    failed = {n: p.get("error") for n, p in report["parts"].items() if p["status"] != "ok"}
    skipped = failed.pop("throughput_eager")  # the one part with nothing to run on a CPU
    assert not failed and proc.returncode == 0, (failed, proc.stdout[-3000:])
    assert "GPU" in skipped
    for name, _ in gpu_check.PARTS:
        assert f"===== part {name}" in log


@pytest.mark.slow
def test_the_report_has_the_figures_a_gpu_run_fills_in(dry_run):
    parts = {n: p["result"] for n, p in dry_run[1]["parts"].items() if p["status"] == "ok"}
    assert parts["env"]["torch"] and parts["env"]["copy_bandwidth_gb_s"] > 0
    tests = parts["gpu_tests"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["skip_reason"]
    assert parts["parity"].pop("graphs")["skip_reason"]
    assert set(parts["parity"]) == {"llama float32", "llama bfloat16"}
    for name, row in parts["parity"].items():
        assert 0 <= row["same_tokens"] <= row["prompts"] == 2
        if "float32" in name:  # exact on CPU too: same fp32 math as transformers
            assert row["same_tokens"] == row["prompts"], name
    eager = parts["kv_sizing"]["eager"]
    assert eager["num_blocks"] * eager["block_size"] >= eager["long_prompt_tokens"] == 4096
    assert eager["long_prompt_output_tokens"] == 16 and eager["kv_bytes_per_block"] > 0
    assert [r["backend"] for r in parts["throughput"]["rows"]] == ["pagedserve", "hf"]
    assert parts["throughput"]["rows"][0]["vs_hf"] > 0
    assert parts["kernels"]["decode"] and parts["kernels"]["copy_bandwidth_gb_s"] > 0
    assert "GPU" in parts["graphs"]["graphs_unavailable"]
    for batch in ("batch 1", "batch 4"):  # graphs fall back to eager on CPU: same tokens
        row = parts["graphs"][batch]
        assert row["same_tokens"] == row["sequences"] and row["graphs_tok_s"] > 0
        assert row["first_difference"] == [8] * row["sequences"]  # every token equal
    assert parts["serve"]["status"] == 200 and parts["serve"]["text"]
    summary = dry_run[1]["summary"]
    assert summary["throughput_vs_hf"] == parts["throughput"]["rows"][0]["vs_hf"]
    assert summary["kv_blocks"] == {"eager": eager["num_blocks"]}
    assert set(summary["graphs_vs_eager"]) == {"batch 1", "batch 4"}


def test_a_part_that_overruns_is_killed_and_recorded(tmp_path, monkeypatch):
    """Checked on the orchestrator alone: a stuck part costs its limit, not the budget."""
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(60)\n")
    real = subprocess.Popen

    def popen(cmd, **kw):
        return real([sys.executable, str(script)], **kw)
    monkeypatch.setattr(gpu_check.subprocess, "Popen", popen)
    with open(tmp_path / "log.txt", "w") as log:
        record = gpu_check.spawn_part("env", str(tmp_path), True, 1.0, log)
    assert record["status"] == "timeout" and record["seconds"] < 10


def test_a_part_that_raises_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    from pagedserve.benchmarks import gpu_check_parts

    def boom(shape, out):
        raise RuntimeError("no such device")
    monkeypatch.setattr(gpu_check_parts, "part_env", boom)
    (tmp_path / "parts").mkdir()
    gpu_check.run_part("env", str(tmp_path), True)
    record = json.loads((tmp_path / "parts" / "env.json").read_text())
    assert record == {"status": "failed", "error": "RuntimeError: no such device"}
