"""Offline tokens/s with tensor_parallel_size 1 and 2 on CPU (gloo), same model and requests.

    python -m pagedserve.benchmarks.tp_cpu [--num-prompts 16] [--input-len 32-128] ...

The model is a random-weight Llama (hidden 1024, 8 layers, 16 heads) built in a temp folder.
On CPU the ranks share the machine's cores (each gets cores / tp threads), so this measures
what splitting the matmuls and adding an all-reduce per layer costs or gains, not a GPU's
scaling. On a busy machine, multi-threaded matmuls (tp=1) suffer most from the contention;
`OMP_NUM_THREADS=1` gives every run one thread per rank for a like-for-like comparison.
"""
import argparse
import tempfile

from pagedserve.benchmarks import models
from pagedserve.benchmarks.stats import throughput
from pagedserve.benchmarks.throughput import run_pagedserve
from pagedserve.benchmarks.workload import parse_range, random_requests, token_counts

SIZE = "tp-cpu"
SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", default="32-128")
    p.add_argument("--output-len", default="32-64")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    models.SIZES.setdefault(SIZE, SHAPE)  # the shared builder, with this benchmark's shape
    with tempfile.TemporaryDirectory() as tmp:
        path = models.build_model(SIZE, tmp)
        print(f"model: random Llama, {models.num_params(SIZE) / 1e6:.0f}M params, {SHAPE}")
        reqs = random_requests(args.num_prompts, parse_range(args.input_len),
                               parse_range(args.output_len), models.VOCAB_SIZE, seed=0,
                               exclude_ids=frozenset({0, 1, 2}))
        prompt_tokens, output_tokens = token_counts(reqs)
        print(f"workload: {len(reqs)} requests, {prompt_tokens} prompt + {output_tokens} "
              f"output tokens, sampled at temperature 1, EOS ignored")
        for tp in args.tp:
            elapsed = run_pagedserve(path, reqs, {"tensor_parallel_size": tp, "device": "cpu",
                                                  "max_model_len": 512})
            t = throughput(len(reqs), prompt_tokens, output_tokens, elapsed)
            print(f"tp={tp}: {elapsed:6.2f} s  {t['output_tokens_per_s']:7.1f} output tok/s  "
                  f"{t['total_tokens_per_s']:7.1f} total tok/s", flush=True)


if __name__ == "__main__":
    main()
