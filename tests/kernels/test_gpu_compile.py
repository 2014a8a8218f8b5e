"""Without a GPU, the kernels still compile for the GPUs they are for (H100/H200 and MI300)."""
import os
import re
import subprocess
import sys

import pytest

KERNELS = ("_decode_split", "_decode_merge", "_prefill", "_store_kv", "_rms_norm", "_rotary",
           "_silu_and_mul")


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_and_gfx942(triton_ops):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tool = "pagedserve.benchmarks.kernel_compile"
    done = subprocess.run([sys.executable, "-m", tool, "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for target in ("sm90", "gfx942"):
        for kernel in KERNELS:
            assert re.search(rf"^{target}\s+ok .* {kernel} ", done.stdout, re.M), (target, kernel)
