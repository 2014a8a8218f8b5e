"""Where a reasoning model's thinking ends, in token ids: what the engine needs to apply a
constraint to the answer only. The server's reasoning parsers (server/reasoning) split the
text with the same tokens."""
from dataclasses import dataclass

# --reasoning-parser NAME -> the tokens that open and close the thinking (vLLM's names)
THINK_TOKENS: dict[str, tuple[str, str]] = {
    "deepseek_r1": ("<think>", "</think>"),
    "qwen3": ("<think>", "</think>"),
}


@dataclass(frozen=True, slots=True)
class ReasoningEnd:
    """The token ids of a model's think tags (each one token in its vocabulary)."""
    start_token_id: int
    end_token_id: int

    @classmethod
    def for_parser(cls, name: str, tokenizer) -> "ReasoningEnd":
        """ValueError if the parser is unknown or its tags are not tokens of this tokenizer
        (the model was not trained to think with them: the split could never happen)."""
        if name not in THINK_TOKENS:
            raise ValueError(f"unknown reasoning parser {name!r} "
                             f"(known: {', '.join(sorted(THINK_TOKENS))})")
        vocab = tokenizer.get_vocab()
        start, end = THINK_TOKENS[name]
        missing = [t for t in (start, end) if t not in vocab]
        if missing:
            raise ValueError(f"reasoning parser {name!r} needs the tokens {start} and {end} "
                             f"in the tokenizer's vocabulary; this tokenizer lacks "
                             f"{' and '.join(missing)}")
        return cls(vocab[start], vocab[end])

    def is_reasoning_end(self, token_ids: list[int]) -> bool:
        """Whether the latest think tag in token_ids closes the thinking: a prompt whose
        template already closed it (thinking disabled), or an earlier turn's tags."""
        for token in reversed(token_ids):
            if token == self.start_token_id:
                return False
            if token == self.end_token_id:
                return True
        return False

    def is_end_token(self, token_id: int) -> bool:
        return token_id == self.end_token_id
