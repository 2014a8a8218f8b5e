"""Incremental detokenization equals a full decode, including byte-fallback UTF-8."""
import pytest
from transformers import AutoTokenizer

from pagedserve.engine.detokenizer import Detokenizer
from pagedserve.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tok(stories_path):
    return AutoTokenizer.from_pretrained(stories_path)


@pytest.mark.parametrize("text", ["Once upon a time, héllo wörld 日本 — ünïcödé!",
                                  "emoji 🙂 then text", "  spaced   out  ", "a\nb\n\nc"])
def test_streamed_text_equals_full_decode(tok, text):
    prompt = tok.encode("Hi")
    ids = tok.encode(text, add_special_tokens=False)
    assert any(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids) or text.isascii()
    d = Detokenizer(tok, prompt, SamplingParams())
    seen = []
    for i in ids:
        d.add(i)
        seen.append(d.text)
        assert "\ufffd" not in d.text
    prompt_text = tok.decode(prompt, skip_special_tokens=True)
    assert d.text == tok.decode(prompt + ids, skip_special_tokens=True)[len(prompt_text):]
    assert all(a == b[:len(a)] for a, b in zip(seen, seen[1:])), "text was rewritten, not appended"


def test_stream_holds_back_possible_stop_prefix(tok):
    d = Detokenizer(tok, tok.encode("Hi"), SamplingParams(stop="named Lily"))
    for i in tok.encode(" a little girl named", add_special_tokens=False):
        assert d.add(i) is None
    assert d.text.endswith("named")
    assert not d.streamable_text(False).endswith("named")
    assert d.streamable_text(True) == d.text
