"""Decode graphs, the parts a CPU can check: the batch-size ladder, padding a step into the
static buffers, and that a padded decode step gives each real sequence the logits and cache
writes of the unpadded eager step. Capture and replay themselves need a GPU
(scripts/gpu_check.sh measures them)."""
import logging

import pytest
import torch

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.cuda_graph import (
    MAX_CAPTURE_SIZE,
    StaticDecodeInputs,
    capture_sizes,
    graphs_unavailable,
    padded_size,
)
from pagedserve.engine.model_runner import ModelRunner
from pagedserve.engine.step_input import StepInput


def test_ladder_matches_vllm_and_ends_at_max_num_seqs():
    assert capture_sizes(256) == [1, 2, 4, *range(8, 257, 8)]
    assert capture_sizes(1) == [1]
    assert capture_sizes(5) == [1, 2, 4, 5]
    assert capture_sizes(100)[-3:] == [88, 96, 100]
    assert capture_sizes(300)[-4:] == [256, 272, 288, 300]
    assert capture_sizes(10_000)[-1] == MAX_CAPTURE_SIZE


def test_a_batch_pads_to_the_next_captured_size():
    sizes = capture_sizes(64)
    assert [padded_size(sizes, n) for n in (1, 2, 3, 5, 8, 9, 63, 64)] == \
        [1, 2, 4, 8, 8, 16, 64, 64]
    assert padded_size(sizes, 65) is None


def test_graphs_only_where_they_can_run():
    assert graphs_unavailable(torch.device("cuda"), "triton") is None
    assert "GPU" in graphs_unavailable(torch.device("cpu"), "cpu")
    assert "triton" in graphs_unavailable(torch.device("cuda"), "torch")


def _meta(runner: ModelRunner, step: StepInput):
    return runner._metadata(step.padded())


def _step(lens: list[int], tables: list[list[int]]) -> StepInput:
    """A decode step: each sequence's next token at position len - 1."""
    ids = torch.tensor([(7 * n) % 500 + 3 for n in lens])
    return StepInput(ids, torch.tensor(lens) - 1, tables, lens, [1] * len(lens))


def test_load_pads_rows_and_overwrites_a_larger_previous_step(tiny_model):
    runner = _runner(tiny_model("llama"), num_kv_blocks=16)
    inputs = StaticDecodeInputs.allocate(8, 6, torch.device("cpu"))
    big = _step([5, 9, 13, 4, 6], [[1], [2, 3], [4, 5, 6, 7], [8], [9]])
    inputs.load(big.input_ids, big.positions, _meta(runner, big), 8)
    small = _step([17, 2], [[10, 11], [12]])
    meta = _meta(runner, small)
    inputs.load(small.input_ids, small.positions, meta, 4)
    m = inputs.metadata(4)
    assert m.max_query_len == 1 and m.num_decodes == 4
    assert inputs.input_ids[:2].tolist() == small.input_ids.tolist()
    assert inputs.positions[:4].tolist() == [16, 1, 0, 0]
    assert m.seq_lens.tolist() == [17, 2, 1, 1]  # padding rows see one token, of block 0
    assert m.slot_mapping.tolist() == meta.slot_mapping.tolist() + [-1, -1]
    assert m.block_tables[:2, :2].tolist() == [[10, 11], [12, 0]]
    assert m.block_tables[2:, 0].tolist() == [0, 0]
    assert m.query_start_loc.tolist() == [0, 1, 2, 3, 4]


def _runner(path: str, **kw) -> ModelRunner:
    config = EngineConfig(path, device="cpu", max_model_len=64, max_num_seqs=8, **kw)
    runner = ModelRunner(config, torch.device("cpu"))
    runner.allocate_kv_cache(config.num_kv_blocks)
    return runner


def _prefill(runner: ModelRunner, lens: list[int]) -> list[list[int]]:
    """Prefill sequences of `lens` tokens into distinct blocks; returns their block tables."""
    tables, first = [], 1  # block 0 stays a real sequence's too: padding must not write there
    for n in lens:
        count = -(-(n + 1) // runner.block_size)
        tables.append(list(range(first, first + count)))
        first += count
    tables[0] = [0] + tables[0][1:]
    ids = torch.cat([torch.arange(n) % 400 + 5 for n in lens])
    pos = torch.cat([torch.arange(n) for n in lens])
    runner.execute(StepInput(ids, pos, tables, lens, lens))
    return tables


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_padded_decode_step_matches_the_eager_step(tiny_model, backend):
    runner = _runner(tiny_model("qwen3"), num_kv_blocks=24, kernel_backend=backend)
    lens = [9, 30, 17]
    tables = _prefill(runner, lens)
    decode = _step([n + 1 for n in lens], tables)
    caches = [(a.k_cache.clone(), a.v_cache.clone()) for a in runner.attn_layers]
    eager = runner.execute(decode)
    eager_caches = [(a.k_cache.clone(), a.v_cache.clone()) for a in runner.attn_layers]
    for a, (k, v) in zip(runner.attn_layers, caches):
        a.k_cache.copy_(k)
        a.v_cache.copy_(v)
    inputs = StaticDecodeInputs.allocate(8, runner.config.max_model_len // runner.block_size,
                                         torch.device("cpu"))
    inputs.load(decode.input_ids, decode.positions, _meta(runner, decode), 4)
    with torch.inference_mode():
        hidden = runner.model(inputs.input_ids[:4], inputs.positions[:4], inputs.metadata(4))
        padded = runner.model.compute_logits(hidden[:3])
    torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
    for a, (k, v) in zip(runner.attn_layers, eager_caches):  # the padding row wrote nothing
        torch.testing.assert_close(a.k_cache, k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.v_cache, v, rtol=1e-5, atol=1e-5)


def test_enforce_eager_false_on_cpu_runs_eagerly_and_says_so_once(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="pagedserve.engine.model_runner"):
        runner = _runner(tiny_model("llama"), num_kv_blocks=8, enforce_eager=False)
        runner.allocate_kv_cache(8)
    records = [r for r in caplog.records if "enforce_eager" in r.getMessage()]
    assert len(records) == 1 and "decode runs eagerly" in records[0].getMessage()
    assert "cpu" in records[0].getMessage()
    assert records[0].levelno == logging.INFO  # a CPU has no graphs to miss: no warning
    assert runner.graphs is None and not runner.use_graphs


def test_graphs_are_the_default_as_in_vllm():
    """Verified on an H200 (scripts/gpu_check.sh): fp32 greedy parity with graphs, 10x the
    eager decode tokens/s at batch 1."""
    import argparse

    from pagedserve.engine.arg_utils import add_engine_args
    assert EngineConfig.defaults()["enforce_eager"] is False
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert parser.parse_args([]).enforce_eager is False
    assert parser.parse_args(["--enforce-eager"]).enforce_eager is True
    assert parser.parse_args(["--no-enforce-eager"]).enforce_eager is False
