"""Readers for one field of a spec object: type, range and choice checks with clear errors."""

from collections.abc import Mapping
from typing import Any


class SpecError(ValueError):
    """A spec the operator cannot serve; reason is a CamelCase word for the status condition."""

    def __init__(self, message: str, reason: str = "InvalidSpec"):
        super().__init__(message)
        self.reason = reason


def only(obj: Mapping, allowed: tuple[str, ...], where: str) -> None:
    """Unknown fields are errors: a typo must not be silently ignored."""
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise SpecError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )


_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def get(obj: Mapping, key: str, where: str, kind: type | tuple, default: Any = None) -> Any:
    """obj[key] if it is of kind (a type or a tuple of types), default if absent; SpecError
    otherwise."""
    value = obj.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, but `replicas: true` is no count
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = [_NAMES[k] for k in kinds if not (k is int and float in kinds)]
        raise SpecError(f"{where}.{key} must be {' or '.join(names)}, got {value!r}")
    return value


def integer(
    obj: Mapping, key: str, where: str, default: int | None = None, minimum: int = 0
) -> int | None:
    value = get(obj, key, where, int, default)
    if value is not None and value < minimum:
        raise SpecError(f"{where}.{key} must be an integer >= {minimum}, got {value}")
    return value


def choice(
    obj: Mapping, key: str, where: str, choices: tuple[str, ...], default: str | None
) -> str | None:
    value = get(obj, key, where, str, default)
    if value is not None and value not in choices:
        raise SpecError(f"{where}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value
