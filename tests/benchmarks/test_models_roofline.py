"""Benchmark models have the advertised size; roofline FLOP counting; latency/roofline runs."""
import json

import pytest

from pagedserve.benchmarks import models
from pagedserve.benchmarks.roofline import decode_flops
from pagedserve.cli import main


def test_decode_flops_by_hand():
    cfg = dict(hidden_size=4, num_hidden_layers=1, num_attention_heads=2, head_dim=2,
               num_key_value_heads=1, intermediate_size=8, vocab_size=10)
    # weights: q,o 2*4*4 + k,v 2*4*2 + mlp 3*4*8 + head 4*10 = 184; attention 2*2*3*2*2 = 48
    assert decode_flops(cfg, context_len=3) == 2 * 184 + 48


@pytest.mark.parametrize("size", ["20M", "100M"])
def test_decode_flops_are_two_per_matmul_weight(size):
    s = models.SIZES[size]
    cfg = dict(s, vocab_size=models.VOCAB_SIZE)
    h, layers = s["hidden_size"], s["num_hidden_layers"]
    norms = (2 * layers + 1) * h
    embedding = models.VOCAB_SIZE * h
    assert decode_flops(cfg, 0) == 2 * (models.num_params(size) - embedding - norms)


def test_built_model_has_the_counted_parameters(tmp_path, capsys):
    from safetensors import safe_open
    path = str(tmp_path / "m")
    main(["bench", "model", "1M", "--out", path])
    assert "0.9M parameters" in capsys.readouterr().out
    with safe_open(f"{path}/model.safetensors", framework="pt") as f:
        total = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert total == models.num_params("1M")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocab_size"] == models.VOCAB_SIZE
    assert (tmp_path / "m" / "tokenizer.json").exists()


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="unknown model size '3M'"):
        models.resolve_model("random:3M")
    assert models.resolve_model("some/folder") == "some/folder"


def test_latency_and_roofline_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAGEDSERVE_BENCH_MODELS", str(tmp_path))
    lat = tmp_path / "lat.json"
    main(["bench", "latency", "--input-len", "4", "--output-len", "3", "--num-iters", "2",
          "--num-iters-warmup", "0", "--output-json", str(lat)])
    row = json.loads(lat.read_text())["results"][0]
    assert row["backend"] == "pagedserve"
    assert 0 < row["prefill_s_median"] and 0 < row["e2e_s_median"]
    roof = tmp_path / "roof.json"
    main(["bench", "roofline", "--model", "random:1M", "--batch-size", "2", "--context-len", "8",
          "--decode-steps", "2", "--output-json", str(roof)])
    r = json.loads(roof.read_text())["results"]["summary"][0]
    assert r["decode_gflops"] > 0 and r["matmul_peak_gflops"] > 0
    assert r["fraction_of_peak"] == pytest.approx(r["decode_gflops"] / r["matmul_peak_gflops"])
    assert (tmp_path / "llama-1M" / "config.json").exists()  # built once, in the cache folder
