"""StructuredOutputsParams: what one request's output must match (vLLM's names and rules)."""
import json
from dataclasses import dataclass

# the constraint kinds, exactly one of which a request names
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(slots=True)
class StructuredOutputsParams:
    """Exactly one of json (a JSON schema, as a dict or its JSON text), regex, choice (a list of
    strings), grammar (EBNF, xgrammar's dialect) or json_object (any JSON object).

    disable_any_whitespace forces compact JSON for this request (as the server-wide option
    does); disable_fallback is accepted for vLLM compatibility: there is one backend, so
    nothing ever falls back. whitespace_pattern is refused by the xgrammar backend.
    """
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            which = f"{len(given)} are given ({', '.join(given)})" if given else "none is given"
            raise ValueError("structured_outputs needs exactly one of "
                             f"{', '.join(CONSTRAINTS)}; {which}")
        self._check_types()

    def _check_types(self) -> None:
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    json.loads(self.json)
                except ValueError as e:
                    raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from None
            elif not isinstance(self.json, dict):
                raise ValueError("structured_outputs.json must be a JSON schema (a dict or its "
                                 f"JSON text), got {type(self.json).__name__}")
        for name in ("regex", "grammar", "whitespace_pattern"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, "
                                 f"got {value!r}")
        if self.choice is not None and not (
                isinstance(self.choice, (list, tuple)) and self.choice
                and all(isinstance(c, str) for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of strings, "
                             f"got {self.choice!r}")
        if self.json_object not in (None, True, False):
            raise ValueError(f"structured_outputs.json_object must be a boolean, "
                             f"got {self.json_object!r}")

    @property
    def kind(self) -> str:
        """The name of the one constraint this request sets."""
        return next(n for n in CONSTRAINTS if getattr(self, n) not in (None, False))
