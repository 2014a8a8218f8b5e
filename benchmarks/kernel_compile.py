"""Compile the Triton kernels for GPU targets on a machine without a GPU.

    pagedserve bench kernels compile [--quick] [--targets sm90,gfx942]

Each kernel is reached through its real Python wrapper (same tile choices as on a GPU) with
CPU tensors; a JIT hook captures what would be compiled and stops the launch, then Triton's
own compiler builds it for each target (CUDA sm_90 = H100/H200, ROCm gfx942 = MI300). Prints
shared memory, registers and spills per kernel, so GPU-only compile errors and register
spills show up in CI. Needs TRITON_INTERPRET unset and Triton 3.4+ (its `knobs` hooks).
"""
import argparse
import itertools
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pagedserve.kernels.backend import interpreting

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}
SHARED_LIMIT = {"sm90": 232448, "gfx942": 65536}  # bytes one program may use (H100, MI300)


class _OfflineDriver:
    """Just enough of a Triton driver for the JIT to specialise and call the cache hook."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def capture(call) -> list[tuple]:
    """The (jit function, compile request) pairs `call()` would compile."""
    seen = []

    def hook(*, fn, compile, **_) -> bool:
        seen.append((fn.jit_function, compile))
        return True  # compiled below, per target; nothing is launched
    triton.knobs.runtime.jit_cache_hook = hook
    try:
        call()
    finally:
        triton.knobs.runtime.jit_cache_hook = None
    return seen


def _cases(heads: list[int], dtypes: list[torch.dtype], groups: list[int]):
    """(label, call) pairs that drive every wrapper at engine-like shapes."""
    from pagedserve.kernels import triton_ops
    from pagedserve.kernels.triton_decode import decode_attention
    for head, dtype, group in itertools.product(heads, dtypes, groups):
        kc = torch.zeros(4, 16, 2, head, dtype=dtype)
        bt = torch.zeros(2, 16, dtype=torch.int32)  # 256 tokens: room for two splits
        lens = torch.ones(2, dtype=torch.int32)
        q = torch.zeros(2, 2 * group, head, dtype=dtype)
        tag = f"D={head} G={group} {str(dtype)[6:]}"
        for splits in (1, 2):
            yield (f"decode splits={splits} {tag}",
                   lambda q=q, kc=kc, bt=bt, lens=lens, s=splits:
                   decode_attention(q, kc, kc, bt, lens, 0.1, s))
        qsl = torch.tensor([0, 1, 2], dtype=torch.int32)
        yield (f"prefill {tag}", lambda q=q, kc=kc, bt=bt, qsl=qsl, lens=lens:
               triton_ops.paged_prefill_attention(q, kc, kc, bt, qsl, lens, 0.1))
    for dtype in dtypes:
        x = torch.zeros(2, 4096, dtype=dtype)
        kv, qh = torch.zeros(2, 8, 128, dtype=dtype), torch.zeros(2, 32, 128, dtype=dtype)
        kc, slots = torch.zeros(4, 16, 8, 128, dtype=dtype), torch.zeros(2, dtype=torch.long)
        cs, pos = torch.zeros(16, 128), torch.zeros(2, dtype=torch.long)
        tag = str(dtype)[6:]
        # the tensors are bound now: a caller may run a case after the loop moved on
        yield f"store_kv_cache {tag}", lambda kv=kv, kc=kc, slots=slots: \
            triton_ops.store_kv_cache(kv, kv, kc, kc, slots)
        yield f"rms_norm+residual {tag}", lambda x=x: triton_ops.rms_norm(x, x[0], 1e-5, x)
        yield f"rotary {tag}", lambda pos=pos, qh=qh, kv=kv, cs=cs: \
            triton_ops.rotary_embedding(pos, qh, kv, cs)
        yield f"silu_and_mul {tag}", lambda x=x: triton_ops.silu_and_mul(x)


def _usage(kernel, target: GPUTarget) -> str:
    """Registers and spills: ptxas -v on CUDA, the assembler's own notes on ROCm."""
    if target.backend == "hip":
        asm = kernel.asm["amdgcn"]
        vgpr = re.search(r"; NumVgprs: (\d+)", asm)
        scratch = re.search(r"; ScratchSize: (\d+)", asm)
        return f"vgprs {vgpr and vgpr[1]}, scratch {scratch and scratch[1]} B"
    from triton.backends.nvidia.compiler import get_ptxas  # absent from ROCm-only Triton builds
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(kernel.asm["ptx"])
        f.flush()
        done = subprocess.run([get_ptxas(target.arch).path, "-v", f"-arch=sm_{target.arch}a",
                               f.name, "-o", "/dev/null"], capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores", done.stderr)
    return f"regs {regs and regs[1]}, spills {spills and spills[1]} B"


def check(targets: list[str], cases: list[tuple]) -> int:
    """Compile every case for every target; returns the number of failures."""
    failures = 0
    for name in targets:
        target = TARGETS[name]
        triton.runtime.driver.set_active(_OfflineDriver(target))
        for label, call in cases:
            for fn, req in capture(call):
                fn.device_caches.clear()  # binders hold the previous target
                src = ASTSource(fn, req["signature"], req["constants"], req["configs"][0])
                opts = {"num_warps": req["num_warps"], "num_stages": req["num_stages"]}
                try:
                    kernel = triton.compile(src, target=target, options=opts)
                except Exception as e:  # report every failing kernel, not just the first
                    failures += 1
                    print(f"{name:7s} FAIL {label}: {fn.__name__}: {str(e).splitlines()[0]}")
                    continue
                fits = kernel.metadata.shared <= SHARED_LIMIT[name]
                failures += not fits  # it compiles, but the launch would run out of resources
                print(f"{name:7s} {'ok  ' if fits else 'FAIL'} {label:38s} {fn.__name__:15s} "
                      f"smem {kernel.metadata.shared:6d} B, {_usage(kernel, target)}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedserve bench kernels compile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one attention shape (D=128, GQA 4, bf16) and bf16 pointwise (CI)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--heads", default="64,80,96,128,256")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--groups", default="1,8", help="query heads per KV head")
    args = parser.parse_args(argv)
    if interpreting():
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    if args.quick:
        args.heads, args.dtypes, args.groups = "128", "bfloat16", "4"
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    cases = list(_cases([int(h) for h in args.heads.split(",")], dtypes,
                        [int(g) for g in args.groups.split(",")]))
    return 1 if check(args.targets.split(","), cases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
