"""The compiled CPU attention equals the torch reference; its build cache and fallbacks."""
import ast
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from pagedserve import LLM, SamplingParams, kernels
from pagedserve.kernels import cpu, reference

pytestmark = pytest.mark.skipif(shutil.which(cpu.COMPILER) is None, reason="no C compiler")
TOL = 1e-5


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache and a not-yet-loaded library; the old state comes back after."""
    monkeypatch.setenv(cpu.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setattr(cpu, "_tried", False)
    yield tmp_path
    kernels.select_backend("cpu", "torch")


def fused_q(tokens: int, heads: int, head: int) -> torch.Tensor:
    """q as the model passes it: a strided view of a fused qkv projection."""
    qkv = torch.randn(tokens, (heads + 2) * head)
    return qkv[:, :heads * head].view(tokens, heads, head)


def query_start_loc(q_lens: list[int]) -> torch.Tensor:
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens).cumsum(0)
    return qsl


def check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"max abs error {err:.3g}"


# a bfloat16 cache (--kv-cache-dtype) under float32 queries: the reference widens it
CACHE_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("head", [8, 64, 128])
@pytest.mark.parametrize("kv_heads,group", [(4, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
def test_decode_matches_reference(cpu_kit, page, head, kv_heads, group, cache_dtype):
    seq_lens = [1, 300, 16, 17, 64, 5, 129]
    c = cpu_kit.make_paged(seq_lens, page, kv_heads, head, cache_dtype)
    q = fused_q(len(seq_lens), kv_heads * group, head)
    scale = head ** -0.5
    out = cpu.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, scale)
    check(out, reference.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                                c.seq_lens, scale))


# (tokens already cached, new tokens): a fresh prompt, a decode token riding along, a chunk
# starting and ending inside a block, a chunk after exactly one block, a long fresh prompt
# (many query chunks inside the kernel), a chunk after a long cached prefix
PREFILL = [(0, 7), (40, 1), (21, 9), (16, 17), (0, 150), (250, 50)]


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("head", [8, 64, 128])
@pytest.mark.parametrize("kv_heads,group", [(4, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
def test_prefill_with_cached_prefix_matches_reference(cpu_kit, page, head, kv_heads, group,
                                                      cache_dtype):
    seq_lens = [p + n for p, n in PREFILL]
    c = cpu_kit.make_paged(seq_lens, page, kv_heads, head, cache_dtype)
    q_lens = [n for _, n in PREFILL]
    q = fused_q(sum(q_lens), kv_heads * group, head)
    qsl, scale = query_start_loc(q_lens), head ** -0.5
    out = cpu.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                      c.seq_lens, scale)
    check(out, reference.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                                 c.seq_lens, scale))


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
def test_odd_head_size_and_one_thread(cpu_kit, monkeypatch, cache_dtype):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    c = cpu_kit.make_paged([3, 70], 16, 2, 24, cache_dtype)
    q, qsl = fused_q(5, 6, 24), query_start_loc([2, 3])
    out = cpu.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                      c.seq_lens, 0.2)
    check(out, reference.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                                 c.seq_lens, 0.2))


def test_a_bfloat16_cache_is_read_by_the_kernel_not_the_reference(cpu_kit, monkeypatch):
    c = cpu_kit.make_paged([9, 30], 16, 2, 64, torch.bfloat16)
    q = torch.randn(2, 4, 64)
    want = reference.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                            c.seq_lens, 0.3)
    monkeypatch.setattr(reference, "paged_attention_decode",
                        lambda *a: pytest.fail("fell back to the reference"))
    check(cpu.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.3),
          want)


def test_other_dtypes_and_shapes_fall_back_to_the_reference(cpu_kit, monkeypatch):
    c = cpu_kit.make_paged([9, 30], 16, 2, 8, torch.bfloat16)
    q = torch.randn(2, 4, 8).to(torch.bfloat16)
    args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.3)
    assert torch.equal(cpu.paged_attention_decode(*args), reference.paged_attention_decode(*args))
    # a group wider than the kernel takes (64 query heads per KV head) runs the reference
    c = cpu_kit.make_paged([9, 30], 16, 1, 8)
    q = torch.randn(2, 64, 8)
    calls = []
    monkeypatch.setattr(reference, "paged_attention_decode",
                        lambda *a: calls.append(1) or torch.zeros(2, 64, 8))
    cpu.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.3)
    assert calls == [1]


def test_build_is_cached_and_reused(fresh_build, monkeypatch):
    assert cpu.load() is not None
    built = list(fresh_build.glob("*.so"))
    assert len(built) == 1 and not list(fresh_build.glob("tmp*"))  # no half-written files left
    # a second process (simulated: state reset) loads the cached file without compiling
    monkeypatch.setattr(cpu, "_tried", False)
    monkeypatch.setattr(cpu, "_compile", lambda *a: pytest.fail("compiled again"))
    assert cpu.load() is not None
    assert list(fresh_build.glob("*.so")) == built


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_kernel_threads_come_from_torchs_openmp_runtime():
    # a second libgomp would bring a second thread pool spinning against torch's. In a fresh
    # process: the test process may hold other packages' runtimes (on a GPU machine's image,
    # scikit-learn's libgomp was loaded by the time this test ran)
    probe = ("import torch\n"
             "from pagedserve.kernels import cpu\n"
             "assert cpu.available()\n"
             "maps = open('/proc/self/maps').read().splitlines()\n"
             "print(sorted({l.split()[-1] for l in maps if 'libgomp' in l or 'libomp' in l}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    runtimes = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert len(runtimes) <= 1, runtimes


@pytest.mark.parametrize("compiler", ["no-such-cc-anywhere", "false"])
def test_a_broken_compiler_falls_back_with_one_warning(fresh_build, monkeypatch, caplog,
                                                       cpu_kit, compiler):
    monkeypatch.setattr(cpu, "COMPILER", compiler)
    with caplog.at_level(logging.WARNING, logger=cpu.log.name):
        assert kernels.select_backend("cpu") == "torch"
        assert kernels.select_backend("cpu", "cpu") == "torch"
    warnings = [r for r in caplog.records if "torch reference" in r.getMessage()]
    assert len(warnings) == 1
    c = cpu_kit.make_paged([5], 16, 1, 8)
    q = torch.randn(1, 2, 8)
    args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.3)
    assert torch.equal(cpu.paged_attention_decode(*args), reference.paged_attention_decode(*args))


# a prompt longer than the step budget (chunked prefill), one sharing its first full block
# (a prefix-cache hit), short ones decoding alongside the others' prefills
PROMPTS = [[1] + list(range(40, 90)), [1] + list(range(40, 55)) + [9, 8], [1, 300, 301],
           [1, 7]]


def greedy(path: str, backend: str) -> list[list[int]]:
    llm = LLM(path, device="cpu", kernel_backend=backend, block_size=16, max_model_len=128,
              max_num_batched_tokens=24, max_num_seqs=4, num_kv_blocks=32)
    assert kernels.active_backend() == backend
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("model", ["stories", "llama", "qwen3"])
def test_engine_greedy_tokens_match_torch_backend(stories_path, tiny_model, model):
    path = stories_path if model == "stories" else tiny_model(model)
    try:
        on_cpu = greedy(path, "cpu")
        on_torch = greedy(path, "torch")
    finally:
        kernels.select_backend("cpu", "torch")
    assert on_cpu == on_torch
    assert all(len(ids) == 12 for ids in on_cpu)
