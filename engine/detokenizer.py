"""Incremental detokenization and stop-string checks for one generated sequence.

Decoding a window that starts a few tokens back and keeping only what follows the window's
earlier text gives correct spacing (SentencePiece strips a leading space per call) and never
emits half a UTF-8 character: while the newest tokens are an incomplete byte sequence the text
ends in U+FFFD and nothing is emitted until the character completes.
"""
from pagedserve.engine.sampling_params import SamplingParams

_WINDOW = 6


def _raw_decoder(tokenizer):
    """The Rust tokenizer's decode when the wrapper would add nothing to it (no clean-up of
    spaces): the wrapper's argument conversion costs several times the decode, twice a token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return backend.decode


class Detokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.ids = list(prompt_token_ids[-_WINDOW:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.max_stop_len = max(map(len, params.stop_strs), default=0)
        self._raw = _raw_decoder(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        if self._raw is not None:
            return self._raw(ids, skip_special_tokens=self.params.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)

    def add(self, token_id: int, check_stop: bool = True) -> str | None:
        """Append a token; returns the stop string if the text now contains one (the text is
        then cut there, keeping the stop string only if include_stop_str_in_output)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None
        delta = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if len(self.ids) > 4 * _WINDOW:  # keep the decode window short
            drop = self.prefix_offset
            self.ids = self.ids[drop:]
            self.prefix_offset, self.read_offset = 0, self.read_offset - drop
        start = max(0, len(self.text) - self.max_stop_len + 1)
        self.text += delta
        return self._check_stop(start) if self.max_stop_len and check_stop else None

    def _check_stop(self, start: int) -> str | None:
        hits = [(self.text.find(s, start), s) for s in self.params.stop_strs]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return None
        i, s = min(hits)
        self.text = self.text[:i + len(s)] if self.params.include_stop_str_in_output else self.text[:i]
        return s

    def streamable_text(self, finished: bool) -> str:
        """Text safe to show while streaming: a tail that might begin a stop string is held."""
        if finished or not self.max_stop_len:
            return self.text
        return self.text[:max(0, len(self.text) - self.max_stop_len + 1)]
