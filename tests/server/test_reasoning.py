"""Reasoning parsers on recorded outputs of thinking models: thinking to reasoning_content,
the answer to content, whole and streamed (a stream adds up to the whole however it is cut);
a parser refuses a tokenizer without its think tokens."""
import random

import pytest
from transformers import AutoTokenizer

from pagedserve.server.reasoning import REASONING_PARSERS, get_reasoning_parser
from tests.conftest import STORIES

# (parser, model output, reasoning_content, content)
CASES = [
    # Qwen3 with thinking on: the model opens and closes the tag itself
    ("qwen3", "<think>\nThe user wants 2+2. That is 4.\n</think>\n\n2 + 2 = 4.",
     "\nThe user wants 2+2. That is 4.\n", "\n\n2 + 2 = 4."),
    # Qwen3 with enable_thinking=False: no tags at all, all answer
    ("qwen3", "Paris is the capital of France.", None, "Paris is the capital of France."),
    # DeepSeek-R1: its template opens <think> in the prompt, the output only closes it
    ("deepseek_r1", "Okay, so I need to find 15% of 80. 0.15 * 80 = 12.\n</think>\n\n**12**",
     "Okay, so I need to find 15% of 80. 0.15 * 80 = 12.\n", "\n\n**12**"),
    ("deepseek_r1", "<think>\nHmm, a haiku about rain.\n</think>\n\nSoft rain on the roof",
     "\nHmm, a haiku about rain.\n", "\n\nSoft rain on the roof"),
    # cut by max_tokens while still thinking: no answer yet
    ("deepseek_r1", "Let me think about this step by step. First, </th",
     "Let me think about this step by step. First, </th", None),
    ("qwen3", "<think>\nStill thinking about", "\nStill thinking about", None),
]


@pytest.fixture(scope="module")
def think_tokenizer(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(STORIES)
    tok.add_tokens(["<think>", "</think>"])
    path = tmp_path_factory.mktemp("think-tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def pieces(text: str, seed: int) -> list[str]:
    if seed < 0:
        return list(text)
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("name, text, reasoning, content", CASES)
def test_whole_output(think_tokenizer, name, text, reasoning, content):
    parser = get_reasoning_parser(name)(think_tokenizer)
    assert parser.extract_reasoning(text) == (reasoning, content)


@pytest.mark.parametrize("name, text, reasoning, content", CASES)
@pytest.mark.parametrize("seed", [-1, 0, 1, 2])
def test_stream_adds_up_to_the_whole(think_tokenizer, name, text, reasoning, content, seed):
    parser = get_reasoning_parser(name)(think_tokenizer)
    got_r, got_c, so_far = "", "", ""
    for piece in pieces(text, seed):
        so_far += piece
        for delta in (parser.extract_reasoning_streaming(so_far),):
            if delta is not None:
                assert "</think>" not in (delta.reasoning_content or "")
                got_r += delta.reasoning_content or ""
                got_c += delta.content or ""
    if (delta := parser.finish_streaming(text)) is not None:
        got_r += delta.reasoning_content or ""
        got_c += delta.content or ""
    assert (got_r or None, got_c or None) == (reasoning, content)


def test_refuses_a_tokenizer_without_think_tokens():
    tok = AutoTokenizer.from_pretrained(STORIES)
    for name in REASONING_PARSERS:
        with pytest.raises(ValueError, match=f"{name!r} needs the tokens <think> and </think>"):
            get_reasoning_parser(name)(tok)
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        get_reasoning_parser("granite")


def test_reasoning_end_in_token_ids(think_tokenizer):
    parser = get_reasoning_parser("qwen3")(think_tokenizer)
    start, end = think_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert parser.is_reasoning_end([5, start, 7, end, 9])
    assert not parser.is_reasoning_end([5, end, 6, start, 7])  # a new turn thinks again
    assert not parser.is_reasoning_end([5, 6])
