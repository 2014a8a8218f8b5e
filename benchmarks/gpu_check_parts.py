"""The parts of the GPU check (benchmarks/gpu_check.py), one function each.

Each part runs in its own process (so a crash, a hang or an OOM costs only that part) and
returns a JSON-able dict. `Shape` holds every size a part uses: the GPU's, or the smallest
that still runs every line on a CPU (--cpu-dry-run).
"""
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM", {}),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
         "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16})}


class Skip(Exception):
    """A part that cannot run here; its message, the reason, goes into the report."""


@dataclass(slots=True)
class Shape:
    """Sizes of one run: `gpu()` for the real check, `cpu()` for the dry run."""
    device: str
    bench_size: str  # benchmarks.models size of the throughput / KV / graphs model
    copy_bytes: int
    parity_prompts: int
    parity_tokens: int
    long_prompt: int
    graph_batches: tuple[int, ...]
    graph_tokens: int
    bench_args: tuple[str, ...]
    parity_archs: tuple[str, ...]
    bench_dtype: str  # of the bench model's runs; bf16 on CPUs is emulated and slow

    @classmethod
    def gpu(cls) -> "Shape":
        return cls("cuda", "1B", 2**30, 8, 24, 4096, (1, 64), 128,
                   ("--num-prompts", "64", "--input-len", "32-256", "--output-len", "16-256"),
                   tuple(ARCHS), "bfloat16")

    @classmethod
    def cpu(cls) -> "Shape":
        return cls("cpu", "1M", 2**24, 2, 4, 4096, (1, 4), 8,
                   ("--num-prompts", "4", "--input-len", "8-16", "--output-len", "4-8"),
                   ("llama",), "float32")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(shape: Shape, reps: int = 10) -> float:
    """Bytes per second (read + write) of a device-to-device copy, median of `reps`."""
    src = torch.empty(shape.copy_bytes, dtype=torch.uint8, device=shape.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        _sync(shape.device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(shape.device)
        times.append(time.perf_counter() - t0)
    return 2 * shape.copy_bytes / sorted(times)[len(times) // 2]


def part_env(shape: Shape, out: str) -> dict:
    """Versions, the device, its memory, and its measured copy bandwidth."""
    import transformers
    facts = {"python": sys.version.split()[0], "torch": torch.__version__,
             "transformers": transformers.__version__, "cuda": torch.version.cuda,
             "hip": getattr(torch.version, "hip", None), "device": shape.device}
    try:
        import triton
        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if shape.device == "cuda":
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                     gpu_total_gib=total / 2**30, gpu_free_gib=free / 2**30,
                     sm_count=props.multi_processor_count)
    facts["copy_bandwidth_gb_s"] = copy_bandwidth(shape) / 1e9
    return facts


def part_gpu_tests(shape: Shape, out: str) -> dict:
    """`pytest -m gpu` over the kernel tests: counts from JUnit XML, max errors from the log."""
    xml = os.path.join(out, "gpu_tests.xml")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "--junitxml", xml, "tests/kernels/test_gpu_kernels.py"]
    if shape.device == "cuda" and importlib.util.find_spec("xdist"):
        # a cold Triton cache compiles ~100 kernel variants: on up to 8 processes it fits the
        # part's limit (the per-kernel error table then stays in the workers: counts only)
        cmd[3:3] = ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, **_junit(xml),
              "max_abs_error": _error_table(proc.stdout)}
    if result["tests"] and result["skipped"] == result["tests"]:
        result["skip_reason"] = "every GPU test skips without a CUDA/ROCm GPU"
    return result


def _junit(path: str) -> dict:
    import xml.etree.ElementTree as ET
    if not os.path.exists(path):
        return {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _error_table(text: str) -> dict[str, float]:
    """The kernel tests' summary: 'name dtype  err' lines after its header."""
    rows, inside = {}, False
    for line in text.splitlines():
        if "max abs error" in line:
            inside = True
        elif inside:
            m = re.fullmatch(r"(.+?)\s+([0-9.e+-]+)", line.strip())
            if not m:
                break
            rows[m.group(1)] = float(m.group(2))
    return rows


def build_tiny(path: str, arch: str, shape: Shape, max_positions: int = 512) -> str:
    """A random-weight HF folder of `arch` (the bundled tokenizer), built on the device."""
    import shutil

    import transformers

    from pagedserve.engine.loader import default_model
    cfg_name, model_name, extra = ARCHS[arch]
    config = getattr(transformers, cfg_name)(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.5, bos_token_id=1,
        eos_token_id=2, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_name)(config).eval().save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(default_model(), name), path)
    return path


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 512) for _ in range(rng.randrange(4, 60))]
            for _ in range(count)]


def engine_greedy(path: str, prompts: list[list[int]], tokens: int, **engine) -> list:
    """Greedy token ids of every prompt from the engine (its own warm-up included)."""
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.sampling_params import SamplingParams
    llm = LLM(path, **engine)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True),
                            use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
    finally:
        llm.llm_engine.shutdown()


def hf_greedy(path: str, prompts: list[list[int]], tokens: int, dtype: torch.dtype,
              device: str) -> list[list[int]]:
    """transformers' greedy tokens, one prompt at a time, never stopping at EOS."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=tokens, pad_token_id=0)
            out.append(gen[0, len(p):].tolist())
    return out


def part_parity(shape: Shape, out: str) -> dict:
    """Engine vs transformers greedy tokens on the same device: fp32 exact, bf16 N of M;
    with decode graphs (enforce_eager=False) too, in fp32."""
    prompts = _prompts(shape.parity_prompts)
    runs = [("float32", True), ("bfloat16", True)]
    result = {}
    if shape.device == "cuda":
        runs.append(("float32", False))
    else:
        result["graphs"] = {"skip_reason": "no decode graphs on CPU (the graphs part checks "
                                           "the eager fallback)"}
    for arch in shape.parity_archs:
        path = build_tiny(os.path.join(out, "models", f"tiny-{arch}"), arch, shape)
        for dtype, eager in runs:
            ref = hf_greedy(path, prompts, shape.parity_tokens, getattr(torch, dtype),
                            shape.device)
            got = engine_greedy(path, prompts, shape.parity_tokens, device=shape.device,
                                dtype=dtype, enforce_eager=eager, kv_cache_memory="256MiB")
            same = sum(g == r for g, r in zip(got, ref))
            name = f"{arch} {dtype}" + ("" if eager else " graphs")
            result[name] = {"same_tokens": same, "prompts": len(prompts),
                            "text": f"same tokens for {same} of {len(prompts)} prompts"}
    return result


def bench_model(shape: Shape, out: str) -> str:
    """The random-weight Llama of shape.bench_size in bf16, 8k positions, made once."""
    from pagedserve.benchmarks.models import SIZES, VOCAB_SIZE
    path = os.path.join(out, "models", f"llama-{shape.bench_size}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import shutil

    import transformers

    from pagedserve.engine.loader import default_model
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=2 * shape.long_prompt,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **SIZES[shape.bench_size])
    torch.manual_seed(0)
    with torch.device(shape.device):  # random init on the GPU: seconds, not a minute
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(default_model(), name), path)
    return path


def part_model(shape: Shape, out: str) -> dict:
    start = time.perf_counter()
    path = bench_model(shape, out)
    return {"path": path, "size": shape.bench_size, "seconds": time.perf_counter() - start}


def _kv_facts(llm, device: str) -> dict:
    engine = llm.llm_engine
    runner = getattr(getattr(engine, "executor", None), "runner", None)
    facts = {"num_blocks": engine.block_manager.num_blocks,
             "block_size": engine.config.block_size}
    if runner is not None:
        per_block = runner.kv_bytes_per_block()
        facts.update(kv_bytes_per_block=per_block,
                     kv_gib=per_block * facts["num_blocks"] / 2**30,
                     decode_graphs=runner.graphs is not None)
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        facts.update(free_gib_after_load=free / 2**30, total_gib=total / 2**30,
                     torch_allocated_gib=torch.cuda.memory_allocated() / 2**30)
    return facts


def part_kv_sizing(shape: Shape, out: str) -> dict:
    """Blocks the profiler allots at gpu_memory_utilization=0.9 (eager and with graphs), and
    a long prompt running through them without OOM."""
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.sampling_params import SamplingParams
    path = bench_model(shape, out)
    result = {}
    for eager in (True, False) if shape.device == "cuda" else (True,):
        free_before = _free_gib(shape.device)
        llm = LLM(path, device=shape.device, dtype=shape.bench_dtype,
                  gpu_memory_utilization=0.9, max_model_len=2 * shape.long_prompt,
                  max_num_seqs=64, enforce_eager=eager)
        try:
            facts = {"free_gib_before_load": free_before, **_kv_facts(llm, shape.device)}
            if eager:
                prompt = [1] + [random.Random(1).randrange(3, 512)
                                for _ in range(shape.long_prompt - 1)]
                t0 = time.perf_counter()
                o = llm.generate([{"prompt_token_ids": prompt}],
                                 SamplingParams(max_tokens=16, ignore_eos=True),
                                 use_tqdm=False)[0]
                facts.update(long_prompt_tokens=len(prompt),
                             long_prompt_output_tokens=len(o.outputs[0].token_ids),
                             long_prompt_seconds=time.perf_counter() - t0)
            result["eager" if eager else "graphs"] = facts
        finally:
            llm.llm_engine.shutdown()
            del llm  # the next engine sizes its cache from what this one gives back
    return result


def _free_gib(device: str) -> float | None:
    """Free device memory once this process's dead tensors are given back."""
    if device != "cuda":
        return None
    import gc
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0] / 2**30


def decode_rate(llm, batch: int, tokens: int) -> tuple[float, list]:
    """Output tokens/s of `batch` 32-token prompts decoding `tokens` each (greedy)."""
    from pagedserve.engine.sampling_params import SamplingParams
    prompts = [{"prompt_token_ids": p[:32] + [5] * (32 - len(p[:32]))}
               for p in _prompts(batch, seed=2)]
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    # warm-up of the same shapes: Triton compiles, the allocator settles
    llm.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    return batch * tokens / elapsed, [list(o.outputs[0].token_ids) for o in outs]


def part_graphs(shape: Shape, out: str) -> dict:
    """Decode tokens/s with graphs off and on at each batch size, and whether the graphs'
    greedy tokens are the eager ones."""
    from pagedserve.engine.cuda_graph import graphs_unavailable
    from pagedserve.engine.llm import LLM
    path = bench_model(shape, out)
    backend = "triton" if shape.device == "cuda" else "cpu"
    result = {"graphs_unavailable": graphs_unavailable(torch.device(shape.device), backend)}
    tokens = {}
    for eager in (True, False):
        llm = LLM(path, device=shape.device, dtype=shape.bench_dtype, enforce_eager=eager,
                  max_num_seqs=max(shape.graph_batches), max_model_len=512,
                  kv_cache_memory="4GiB" if shape.device == "cuda" else "64MiB")
        try:
            for batch in shape.graph_batches:
                rate, toks = decode_rate(llm, batch, shape.graph_tokens)
                key = f"batch {batch}"
                result.setdefault(key, {})["eager_tok_s" if eager else "graphs_tok_s"] = rate
                tokens.setdefault(key, []).append(toks)
        finally:
            llm.llm_engine.shutdown()
    for key, (eager_toks, graph_toks) in tokens.items():
        row = result[key]
        row["graphs_vs_eager"] = row["graphs_tok_s"] / row["eager_tok_s"]
        row["same_tokens"] = sum(a == b for a, b in zip(eager_toks, graph_toks))
        row["sequences"] = len(eager_toks)
        # where a sequence's tokens first differ: late, after many equal steps, is a
        # rounding flip between near-tied logits (bf16), early is a wrong graph
        row["first_difference"] = sorted(_first_difference(a, b)
                                         for a, b in zip(eager_toks, graph_toks))
    return result


def _first_difference(a: list[int], b: list[int]) -> int:
    """The index of the first token where two generations differ (their length if none)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def part_throughput(shape: Shape, out: str) -> dict:
    """`pagedserve bench throughput --backend pagedserve,hf` on the bench model, at the
    defaults (decode graphs on a GPU)."""
    return _bench_throughput(shape, out, "throughput", ["--backend", "pagedserve,hf"])


def part_throughput_eager(shape: Shape, out: str) -> dict:
    """The same workload, pagedserve alone without decode graphs (--enforce-eager)."""
    if shape.device != "cuda":
        raise Skip("decode graphs need a GPU: on CPU the default run was eager already")
    return _bench_throughput(shape, out, "throughput_eager",
                             ["--backend", "pagedserve", "--enforce-eager"])


def _bench_throughput(shape: Shape, out: str, name: str, extra: list[str]) -> dict:
    from pagedserve.cli import main
    path = bench_model(shape, out)
    report = os.path.join(out, f"{name}.json")
    argv = ["bench", "throughput", "--model", path, *extra, "--dtype", shape.bench_dtype,
            "--device", shape.device, *shape.bench_args, "--output-json", report]
    if main(argv):  # in this process: one interpreter start less
        raise RuntimeError("pagedserve bench throughput failed")
    with open(report) as f:
        rows = json.load(f)["results"]["summary"]
    keep = ("backend", "output_tokens_per_s", "total_tokens_per_s", "elapsed_s", "vs_hf")
    return {"command": " ".join(["pagedserve", *argv]),
            "rows": [{k: r.get(k) for k in keep} for r in rows]}


def kernel_bench() -> tuple[str, object]:
    """The kernel benchmark wherever it lives: `pagedserve bench kernels gpu`, else the
    older `python -m pagedserve.kernels.bench`; (its command, its main)."""
    import importlib
    if importlib.util.find_spec("pagedserve.benchmarks.kernel_gpu"):
        module = importlib.import_module("pagedserve.benchmarks.kernel_gpu")
        return "pagedserve bench kernels gpu", module.main
    return "python -m pagedserve.kernels.bench", importlib.import_module(
        "pagedserve.kernels.bench").main


def part_kernels(shape: Shape, out: str) -> dict:
    """Decode attention GB/s as a fraction of copy bandwidth, from the kernel benchmark."""
    import contextlib
    import io
    command, run = kernel_bench()
    argv = [] if shape.device == "cuda" else ["--tiny"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = run(argv)
    text = text.getvalue()
    print(text)
    if code:
        raise RuntimeError(f"{command} exited with {code}")
    rows = []
    for line in text.split("\nprefill")[0].splitlines():
        cells = line.split()
        if len(cells) == 8 and cells[0].isdigit():
            rows.append({"batch": int(cells[0]), "context": int(cells[1]),
                         "triton_ms": float(cells[2]), "torch_ms": float(cells[3]),
                         "gb_s": float(cells[5]), "of_copy": float(cells[6].rstrip("%")) / 100,
                         "max_err": float(cells[7])})
    copy = re.search(r"copy bandwidth ([0-9.]+) GB/s", text)
    return {"command": " ".join([command, *argv]), "copy_bandwidth_gb_s": float(copy.group(1)),
            "decode": rows, "best_of_copy": max((r["of_copy"] for r in rows), default=None)}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def _wait_healthy(base: str, proc: subprocess.Popen, deadline_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"pagedserve serve exited with code {proc.returncode}")
        try:
            if _http(f"{base}/health", timeout=2)[0] == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"/health not 200 within {deadline_s:.0f} s")


def part_serve(shape: Shape, out: str) -> dict:
    """`pagedserve serve` (the bundled model) on the device, answering one completion."""
    import signal
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "pagedserve", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--device", shape.device])
    try:
        ready_s = _wait_healthy(base, proc, 120)
        status, body = _http(f"{base}/v1/completions",
                             {"model": "stories260K", "prompt": "Once upon a time",
                              "max_tokens": 16, "temperature": 0})
        text = body.get("choices", [{}])[0].get("text")
        if status != 200 or not text:
            raise RuntimeError(f"/v1/completions answered {status}: {body}")
        return {"ready_seconds": ready_s, "status": status, "text": text}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
