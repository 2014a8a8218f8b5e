"""Integer helpers shared by the engine and the kernels."""


def cdiv(a: int, b: int) -> int:
    """a / b rounded up, for integers a >= 0 and b > 0 (blocks for a token count, ...)."""
    return -(-a // b)
