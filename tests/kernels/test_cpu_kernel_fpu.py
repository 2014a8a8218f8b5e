"""Loading the compiled CPU kernel must not change floating point for the rest of the process
(-ffast-math linked crtfastmath.o, which set flush-to-zero: subnormals became 0 everywhere)."""
import sys

import pytest

from pagedserve.kernels import cpu


def test_loading_the_kernel_keeps_subnormal_floats():
    tiny = sys.float_info.min
    if not cpu.available():
        pytest.skip("no C compiler here")
    assert tiny / 2 > 0, "the kernel library turned on flush-to-zero"
