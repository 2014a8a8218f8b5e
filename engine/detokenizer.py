"""Incremental detokenization and stop-string checks for one generated sequence.

Decoding a window that starts a few tokens back and keeping only what follows the window's
earlier text gives correct spacing (SentencePiece strips a leading space per call). The text
of the newest tokens is held back only while it may still change: a trailing incomplete UTF-8
sequence that more bytes can complete. Bytes that can never form a character are emitted as
U+FFFD, as `tokenizer.decode` shows them, and whatever is still held is flushed when the
sequence finishes, so the final text is always the full decode of its tokens.
"""
import re
import weakref

from pagedserve.engine.sampling_params import SamplingParams

_WINDOW = 6
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_REPLACEMENT = "\ufffd"


def _raw_decoder(tokenizer):
    """The Rust tokenizer's decode when the wrapper would add nothing to it (no clean-up of
    spaces): the wrapper's argument conversion costs several times the decode, twice a token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return backend.decode


def may_complete(data: bytes) -> bool:
    """True if `data` is valid UTF-8 except for an incomplete character at its very end."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data" and e.end == len(data)
    return False


_BYTE_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _byte_tokens(tokenizer) -> dict[int, int]:
    """{token id: byte} of the tokenizer's byte-fallback tokens, built once per tokenizer."""
    found = _BYTE_TOKENS.get(tokenizer)
    if found is None:
        found = {tid: int(m.group(1), 16) for tok, tid in tokenizer.get_vocab().items()
                 if (m := _BYTE_TOKEN.fullmatch(tok)) is not None}
        _BYTE_TOKENS[tokenizer] = found
    return found


class Detokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.ids = list(prompt_token_ids[-_WINDOW:])
        self.prefix_offset = 0  # the decode window starts here
        self.read_offset = len(self.ids)  # text of ids before this is fully in self.text
        self.sent = 0  # characters of the tokens from read_offset on already in self.text
        self.text = ""
        self.max_stop_len = max(map(len, params.stop_strs), default=0)
        self._raw = _raw_decoder(tokenizer)
        self._skipped = frozenset(tokenizer.all_special_ids if params.skip_special_tokens else ())
        self.prefix_text = self._decode(self.ids)  # decode(ids[prefix_offset:read_offset])

    def _decode(self, ids: list[int]) -> str:
        if self._raw is not None:
            return self._raw(ids, skip_special_tokens=self.params.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)

    def add(self, token_id: int, check_stop: bool = True) -> str | None:
        """Append a token; returns the stop string if the text now contains one (the text is
        then cut there, keeping the stop string only if include_stop_str_in_output)."""
        self.ids.append(token_id)
        return self._advance(final=False, check_stop=check_stop)

    def flush(self) -> None:
        """The sequence has ended: nothing can complete any more, so all held text goes out."""
        self._advance(final=True, check_stop=False)

    def _advance(self, final: bool, check_stop: bool) -> str | None:
        new = self._decode(self.ids[self.prefix_offset:])[len(self.prefix_text):]
        if not new:  # e.g. a skipped special token: the window must keep text to space from
            return None
        held = 0 if final else self._held_chars(new)
        delta = new[self.sent:len(new) - held]
        if held:
            self.sent += len(delta)
        else:  # everything up to here is final: the next window starts at these tokens
            self._next_window()
        if not delta:
            return None
        start = max(0, len(self.text) - self.max_stop_len + 1)
        self.text += delta
        return self._check_stop(start) if self.max_stop_len and check_stop else None

    def _next_window(self) -> None:
        self.prefix_offset, self.read_offset, self.sent = self.read_offset, len(self.ids), 0
        if len(self.ids) > 4 * _WINDOW:  # keep the decode window short
            drop = self.prefix_offset
            self.ids = self.ids[drop:]
            self.prefix_offset, self.read_offset = 0, self.read_offset - drop
        self.prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])

    def _held_chars(self, new: str) -> int:
        """How many trailing characters of the new text may still change with more tokens."""
        tail = self._trailing_fallback_bytes()
        if tail:
            # byte-fallback decodes a run of byte tokens at once: valid UTF-8 as text, else
            # every byte as U+FFFD. A run valid so far turns to U+FFFDs if a bad byte follows.
            try:
                return min(len(tail.decode("utf-8")), len(new))
            except UnicodeDecodeError:
                return min(len(tail), len(new)) if may_complete(tail) else 0
        # byte-level BPE: an incomplete character is one U+FFFD until its last byte arrives
        return 1 if new.endswith(_REPLACEMENT) else 0

    def _trailing_fallback_bytes(self) -> bytes:
        """The bytes of the byte-fallback tokens (<0xNN>) that end the sequence."""
        byte_of = _byte_tokens(self.tokenizer)
        # skipped special tokens vanish before decoding: the bytes around them join up
        skipped = self._skipped
        out = bytearray()
        for tid in reversed(self.ids[self.read_offset:]):
            if tid in skipped:
                continue
            if tid not in byte_of:
                break
            out.append(byte_of[tid])
        out.reverse()
        return bytes(out)

    def _check_stop(self, start: int) -> str | None:
        hits = [(self.text.find(s, start), s) for s in self.params.stop_strs]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return None
        i, s = min(hits)
        keep = i + len(s) if self.params.include_stop_str_in_output else i
        self.text = self.text[:keep]
        return s

    def streamable_text(self, finished: bool) -> str:
        """Text safe to show while streaming: a tail that might begin a stop string is held.
        A finished sequence's text is complete (held bytes flushed)."""
        if finished:
            return self.text
        if not self.max_stop_len:
            return self.text
        return self.text[:max(0, len(self.text) - self.max_stop_len + 1)]
