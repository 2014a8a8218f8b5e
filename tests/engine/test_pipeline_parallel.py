"""Pipeline parallelism on CPU (gloo): the same greedy tokens as one rank for pp=2, pp=2 x tp=2
and pp=4, each stage holding only its layers' weights and KV cache, fail-fast on a dead
stage, and the layer split vLLM makes."""
import os
import random
import signal

import pytest
import torch

from pagedserve import LLM, SamplingParams
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.executor import TensorParallelError
from pagedserve.engine.model_runner import ModelRunner
from pagedserve.engine.pipeline import get_pp_indices, stage_of
from tests.engine.test_tensor_parallel import workers

# 5 Llama layers split unevenly (pp=2: 3 + 2; pp=4: 1 + 1 + 2 + 1); Qwen2 with q/k/v biases,
# one KV head and tied embeddings (the last stage fills its LM head from the embedding)
MODELS = {"llama": ("llama", {"num_hidden_layers": 5}),
          "qwen2": ("qwen2", {"num_hidden_layers": 4, "num_key_value_heads": 1,
                              "vocab_size": 510, "tie_word_embeddings": True})}
# chunked prefills (58 > 32 tokens a step) mixed with decodes; 12 blocks of 8 tokens are too
# few for four sequences of up to 68 tokens, so the scheduler preempts and recomputes
ENGINE = dict(max_num_batched_tokens=32, max_num_seqs=4, block_size=8, max_model_len=96,
              num_kv_blocks=12)
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
LAYOUTS = [pytest.param(dict(pipeline_parallel_size=2), id="pp2"),
           pytest.param(dict(pipeline_parallel_size=2, tensor_parallel_size=2), id="pp2xtp2"),
           pytest.param(dict(pipeline_parallel_size=4), id="pp4",
                        marks=pytest.mark.slow)]


def prompts() -> list[dict]:
    rng = random.Random(1)
    ids = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 16, 33, 58)]
    return [{"prompt_token_ids": p} for p in ids]


def generate(llm: LLM) -> tuple[list[list[int]], int]:
    """Greedy token ids of every prompt, and how many preemptions it took."""
    outs = llm.generate(prompts(), GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm.llm_engine.scheduler.num_preemptions


@pytest.fixture(scope="module")
def model(tiny_model):
    def path(name: str) -> str:
        arch, overrides = MODELS[name]
        return tiny_model(arch, **overrides)
    return path


@pytest.fixture(scope="module")
def reference(model):
    cache: dict[str, tuple] = {}

    def tokens(name: str) -> tuple[list[list[int]], int]:
        if name not in cache:
            cache[name] = generate(LLM(model(name), **ENGINE))
        return cache[name]
    return tokens


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_tokens_match_one_rank(model, reference, name, layout):
    expected, preemptions = reference(name)
    assert preemptions > 0  # the workload does exercise recomputation
    before = workers()
    llm = LLM(model(name), **layout, **ENGINE)
    world = layout["pipeline_parallel_size"] * layout.get("tensor_parallel_size", 1)
    assert len(workers() - before) == world - 1
    try:
        assert generate(llm)[0] == expected
    finally:
        llm.llm_engine.shutdown()
    assert workers() == before


@pytest.mark.parametrize("layers,pp,expected", [
    (4, 2, [(0, 2), (2, 4)]),
    (5, 2, [(0, 3), (3, 5)]),
    (5, 4, [(0, 1), (1, 2), (2, 4), (4, 5)]),  # the remainder: second-to-last first
    (7, 4, [(0, 2), (2, 4), (4, 6), (6, 7)]),  # the remainder never lands on the last stage
])
def test_layer_split_is_vllms(layers, pp, expected):
    assert [get_pp_indices(layers, r, pp) for r in range(pp)] == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_each_stage_holds_only_its_layers(model, name):
    """Stage runners built in-process (loading needs no collectives): the parameters and KV
    layers of a stage are its own, and the stages together hold the one-rank model."""
    config = EngineConfig(model=model(name), pipeline_parallel_size=2, device="cpu")
    whole = ModelRunner(EngineConfig(model=model(name), device="cpu"), torch.device("cpu"))
    full = dict(whole.model.named_parameters())
    stages = [ModelRunner(config, torch.device("cpu"), pp=stage_of(r, 1, 2)) for r in (0, 1)]
    first, last = (dict(s.model.named_parameters()) for s in stages)
    split = get_pp_indices(config.model_config.num_hidden_layers, 0, 2)[1]
    assert all(int(n.split(".")[2]) < split for n in first if n.startswith("model.layers."))
    assert all(int(n.split(".")[2]) >= split for n in last if n.startswith("model.layers."))
    assert "model.embed_tokens.weight" in first and "lm_head.weight" not in first
    assert "model.norm.weight" in last and "model.embed_tokens.weight" not in last
    assert [len(s.attn_layers) for s in stages] == [split, len(whole.attn_layers) - split]
    tied = {"lm_head.weight": full.get("lm_head.weight", full["model.embed_tokens.weight"])}
    for n, p in {**first, **last}.items():
        assert torch.equal(p, {**full, **tied}[n]), n  # a tied LM head: the embedding's
    assert set(first) | set(last) >= set(full) - {"lm_head.weight"}


@pytest.mark.timeout(120)
def test_killed_stage_fails_the_step_and_names_the_rank(model):
    before = workers()
    llm = LLM(model("llama"), pipeline_parallel_size=2, tensor_parallel_size=2, **ENGINE)
    engine = llm.llm_engine
    last_stage = engine.executor.procs[2].pid  # global rank 3: stage 1, tensor-parallel rank 1
    for p in prompts():
        engine.add_request(None, p, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    os.kill(last_stage, signal.SIGKILL)
    with pytest.raises(TensorParallelError,
                       match=r"rank 3 \(pipeline stage 1, tensor-parallel rank 1\) died "
                             r"\(killed by signal 9\)"):
        for _ in range(100):  # the step in flight or the next one must fail, not hang
            engine.step()
    assert workers() == before
    engine.shutdown()


@pytest.mark.parametrize("kwargs,message", [
    ({"pipeline_parallel_size": 6}, r"pipeline_parallel_size=6 exceeds the model's 5 layers"),
    ({"pipeline_parallel_size": 0}, r"pipeline_parallel_size must be a positive integer"),
    ({"pipeline_parallel_size": 2, "distributed_executor_backend": "uni"}, r"needs 'mp'"),
])
def test_bad_pipeline_sizes_are_refused(model, kwargs, message):
    before = workers()
    with pytest.raises(ValueError, match=message):
        LLM(model("llama"), **kwargs)
    assert workers() == before
