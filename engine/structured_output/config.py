"""StructuredOutputsConfig: the engine-wide options of structured outputs (vLLM's names)."""
from dataclasses import dataclass, fields

BACKENDS = ("auto", "xgrammar")


@dataclass(slots=True)
class StructuredOutputsConfig:
    """backend: "auto" or "xgrammar" (the only one built in; "auto" means it).
    disable_any_whitespace: JSON without free whitespace between tokens. xgrammar's default
    whitespace rule lets a model emit newlines until max_tokens (small models do); this
    makes every JSON constraint compact. disable_fallback: accepted for vLLM compatibility
    (one backend, nothing to fall back to). reasoning_parser: the server's --reasoning-parser;
    with it a constraint applies only once the thinking has ended (enable_in_reasoning
    applies it from the first token instead).
    """
    backend: str = "auto"
    disable_any_whitespace: bool = False
    disable_fallback: bool = False
    reasoning_parser: str = ""
    enable_in_reasoning: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"structured_outputs_config.backend must be one of "
                             f"{', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("disable_any_whitespace", "disable_fallback", "enable_in_reasoning"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"structured_outputs_config.{name} must be a boolean, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_value(cls, value: "StructuredOutputsConfig | dict | None"
                   ) -> "StructuredOutputsConfig":
        """Accept the config, a dict of its fields (LLM(structured_outputs_config={...})) or
        None; an unknown key is a ValueError naming it."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError("structured_outputs_config must be a dict or a "
                             f"StructuredOutputsConfig, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"structured_outputs_config has no field {unknown[0]!r} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**value)
