"""CPU attention benchmark: the compiled kernel against the torch reference.

    pagedserve bench kernels cpu [--threads N]

Decode attention is memory bound, so it is also reported as K and V bytes read per second.
"""
import argparse
import os

import torch

from pagedserve.benchmarks.kernel_gpu import paged_cache, timer
from pagedserve.kernels import cpu, reference

# name, (sequences, context, new tokens per sequence, kv heads, group, head size)
SHAPES = [
    ("stories260K decode", (256, 300, 1, 4, 2, 8)),
    ("20M decode (MHA, d64)", (64, 400, 1, 8, 1, 64)),
    ("1B decode (GQA 8, d64)", (32, 1024, 1, 4, 8, 64)),
    ("d128 decode", (16, 2048, 1, 8, 4, 128)),
    ("stories260K prefill", (8, 256, 256, 4, 2, 8)),
    ("20M prefill, cached prefix", (4, 512, 128, 8, 1, 64)),
]


def run_shape(shape: tuple, page: int, time_ms) -> tuple[float, float, float, float]:
    """(kernel ms, reference ms, kernel GB/s of K/V read, max abs difference)."""
    batch, ctx, new, kv_heads, group, head = shape
    k, v, table, lens = paged_cache(batch, ctx, page, kv_heads, head, torch.float32, "cpu")
    q = torch.randn(batch * new, kv_heads * group, head)
    scale = head ** -0.5
    if new == 1:
        def impl(mod):
            return lambda: mod.paged_attention_decode(q, k, v, table, lens, scale)
    else:
        qsl = torch.arange(0, batch * new + 1, new, dtype=torch.int32)

        def impl(mod):
            return lambda: mod.paged_prefill_attention(q, k, v, table, qsl, lens, scale)
    err = (impl(cpu)() - impl(reference)()).abs().max().item()
    ms, ref_ms = time_ms(impl(cpu)), time_ms(impl(reference))
    gbs = 2 * k[0, 0].numel() * 4 * batch * ctx / (ms * 1e-3) / 1e9
    return ms, ref_ms, gbs, err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pagedserve bench kernels cpu",
                                description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--page", type=int, default=16, help="block size")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not cpu.available():
        raise SystemExit("the CPU kernel did not build (see the warning above)")
    time_ms = timer(torch.device("cpu"), args.reps)
    print(f"threads {args.threads}, block size {args.page}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'shape':28s} {'kernel ms':>10s} {'torch ms':>10s} {'speedup':>8s} "
          f"{'KV GB/s':>8s} {'max err':>8s}")
    for name, shape in SHAPES:
        ms, ref_ms, gbs, err = run_shape(shape, args.page, time_ms)
        print(f"{name:28s} {ms:10.3f} {ref_ms:10.3f} {ref_ms / ms:7.1f}x {gbs:8.2f} {err:8.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
