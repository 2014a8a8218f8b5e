"""No text is lost to byte tokens: streamed text only grows, the final text is the full decode.

Byte-fallback tokenizers (stories260K, Llama, Mistral) can emit byte tokens that never form
valid UTF-8; a random model does so often. The reference is tokenizer.decode of the prompt's
tail plus the output, minus the prompt tail's own text (what vLLM's DecodeStream, primed with
the prompt, emits).
"""
import random

import pytest
from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer

from pagedserve.engine.detokenizer import Detokenizer, may_complete
from pagedserve.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tok(stories_path):
    return AutoTokenizer.from_pretrained(stories_path)


def _byte(tok, b: int) -> int:
    return tok.convert_tokens_to_ids(f"<0x{b:02X}>")


def _run(tok, prompt: list[int], ids: list[int], skip: bool = True) -> tuple[str, list[str]]:
    d = Detokenizer(tok, prompt, SamplingParams(skip_special_tokens=skip))
    seen = []
    for i in ids:
        d.add(i)
        seen.append(d.streamable_text(False))
    d.flush()
    return d.streamable_text(True), seen


def _reference(tok, prompt: list[int], ids: list[int], skip: bool = True) -> str:
    head = tok.decode(prompt[-6:], skip_special_tokens=skip)
    return tok.decode(prompt[-6:] + ids, skip_special_tokens=skip)[len(head):]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("skip", [True, False])
def test_random_tokens_final_text_is_the_full_decode(tok, seed, skip):
    rng = random.Random(seed)
    prompt = tok.encode("Once upon a time")
    # half of stories260K's vocabulary is byte tokens: random ids give invalid UTF-8 often
    ids = [rng.randrange(0, tok.vocab_size) for _ in range(rng.randrange(1, 120))]
    final, seen = _run(tok, prompt, ids, skip)
    assert final == _reference(tok, prompt, ids, skip)
    steps = seen + [final]
    assert all(b.startswith(a) for a, b in zip(steps, steps[1:])), "text was rewritten"


def test_invalid_bytes_at_the_end_are_flushed(tok):
    prompt = tok.encode("Hi")
    ids = tok.encode(" a girl", add_special_tokens=False) + [_byte(tok, 0xE6)]
    final, seen = _run(tok, prompt, ids)
    assert seen[-1] == " a girl"  # E6 may still start a character: held while running
    assert final == " a girl\ufffd" == _reference(tok, prompt, ids)


def test_bytes_that_cannot_complete_are_not_held(tok):
    prompt = tok.encode("Hi")
    ids = tok.encode(" a", add_special_tokens=False) + [_byte(tok, 0xE6), _byte(tok, 0x41)]
    d = Detokenizer(tok, prompt, SamplingParams())
    for i in ids:
        d.add(i)
    assert d.text == " a\ufffd\ufffd" == _reference(tok, prompt, ids)


def test_byte_run_waits_until_it_cannot_change(tok):
    """A run of byte tokens decodes as a whole (one bad byte makes all of it U+FFFD): it is
    held until a normal token ends it, or the sequence ends."""
    prompt = tok.encode("Hi")
    ids = [_byte(tok, b) for b in "日".encode()] + tok.encode(" a", add_special_tokens=False)
    d = Detokenizer(tok, prompt, SamplingParams())
    texts = []
    for i in ids:
        d.add(i)
        texts.append(d.text)
    assert texts == ["", "", "", "日 a"]
    d = Detokenizer(tok, prompt, SamplingParams())
    for i in ids[:3]:
        d.add(i)
    d.flush()
    assert d.text == "日"


def test_same_text_as_decode_stream_on_valid_text(tok):
    """On text that is valid UTF-8 (DecodeStream raises on some runs of bad bytes: a byte
    run it already emitted turns into U+FFFDs), the text equals vLLM's DecodeStream's."""
    prompt = tok.encode("Once upon a time")
    ids = tok.encode(" héllo wörld 日本 — 🙂 ünïcödé! the end", add_special_tokens=False)
    stream = DecodeStream(skip_special_tokens=True)
    for t in prompt[-6:]:
        stream.step(tok.backend_tokenizer, t)
    expected = "".join(filter(None, (stream.step(tok.backend_tokenizer, t) for t in ids)))
    assert _run(tok, prompt, ids)[0] == expected


def test_may_complete():
    assert may_complete("日".encode()[:2]) and may_complete(b"ab\xf0")
    assert not may_complete(b"\xe6A") and not may_complete(b"\x80") and not may_complete(b"ab")
