"""`pagedserve bench` end to end on the bundled model, at a size that runs in seconds."""
import json
import subprocess
import sys

import pytest

from pagedserve.cli import main


def test_parsers_import_no_torch():
    code = ("import sys; from pagedserve.cli import build_parser; "
            "build_parser().parse_args(['bench', 'throughput', '--backend', 'pagedserve,hf']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_throughput_both_backends(tmp_path, capsys):
    out = tmp_path / "t.json"
    main(["bench", "throughput", "--backend", "pagedserve,hf", "--num-prompts", "4",
          "--input-len", "4-12", "--output-len", "2-6", "--hf-max-batch-size", "2",
          "--max-num-seqs", "4", "--output-json", str(out)])
    printed = capsys.readouterr().out
    assert "pagedserve" in printed and "output tok/s" in printed
    result = json.loads(out.read_text())
    rows = {r["backend"]: r for r in result["results"]["summary"]}
    assert set(rows) == {"pagedserve", "hf"}
    for r in rows.values():
        assert r["num_requests"] == 4 and 4 * 4 <= r["prompt_tokens"] <= 4 * 12
        assert r["output_tokens_per_s"] == pytest.approx(r["output_tokens"] / r["elapsed_s"])
    ratio = rows["pagedserve"]["output_tokens_per_s"] / rows["hf"]["output_tokens_per_s"]
    assert rows["pagedserve"]["vs_hf"] == pytest.approx(ratio)
    assert result["machine"]["cpu_count"] >= 1 and "load_avg_1_5_15" in result["machine"]


def test_workload_too_long_for_the_model_is_a_clear_error():
    with pytest.raises(SystemExit, match="context is 512"):
        main(["bench", "throughput", "--num-prompts", "2", "--input-len", "500",
              "--output-len", "20"])


def test_unknown_backend_is_rejected():
    with pytest.raises(SystemExit, match="--backend"):
        main(["bench", "throughput", "--backend", "vllm", "--num-prompts", "1"])
