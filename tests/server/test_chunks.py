"""Stream chunks are built from dicts for speed; their bytes must be what the pydantic response
models (the documented schema) would write."""
import json

import pytest

from pagedserve.engine.outputs import CompletionOutput
from pagedserve.server.generation import Chunks, StreamChoice, sse
from pagedserve.server.protocol import (
    ChatCompletionChunk,
    ChatLogprobs,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
)

LP = CompletionLogprobs(tokens=[" é"], token_logprobs=[-0.25], top_logprobs=[{" é": -0.25}],
                        text_offset=[3])
CHAT_LP = ChatLogprobs(content=[TokenLogprob(token="→", logprob=-1.5, bytes=[226, 134, 146],
                                             top_logprobs=[TopLogprob(token="→", logprob=-1.5,
                                                                      bytes=[226, 134, 146])])])


@pytest.mark.parametrize("text, lp, finish, stop", [
    (" once", None, None, None), ("", None, "stop", 13), ("\"quoted\"\n→ ü", LP, "length", None),
    ("x", None, "stop", "END")])
def test_completion_chunks_match_the_model(text, lp, finish, stop):
    chunk = Chunks("cmpl-1", "text_completion", 1700000000, "stories260K")
    fast = chunk([{"index": 2, "text": text, "logprobs": lp and lp.model_dump(),
                   "finish_reason": finish, "stop_reason": stop, "prompt_logprobs": None,
                   "prompt_token_ids": None, "token_ids": None}])
    model = CompletionResponse(id="cmpl-1", created=1700000000, model="stories260K",
                               choices=[CompletionChoice(index=2, text=text, logprobs=lp,
                                                         finish_reason=finish, stop_reason=stop)])
    assert fast == sse(model)
    usage = Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    assert chunk([], usage) == sse(CompletionResponse(id="cmpl-1", created=1700000000,
                                                      model="stories260K", choices=[], usage=usage))


@pytest.mark.parametrize("delta, lp", [({"role": "assistant", "content": ""}, None),
                                       ({"role": None, "content": "→ hi"}, CHAT_LP)])
def test_chat_chunks_match_the_model(delta, lp):
    chunk = Chunks("chatcmpl-1", "chat.completion.chunk", 1700000000, "m")
    fast = chunk([{"index": 0, "delta": delta, "logprobs": lp and lp.model_dump(),
                   "finish_reason": None, "stop_reason": None, "token_ids": None}])
    model = ChatCompletionChunk(id="chatcmpl-1", created=1700000000, model="m", choices=[
        ChatStreamChoice(index=0, delta=DeltaMessage(**delta), logprobs=lp)])
    assert fast == sse(model)
    assert json.loads(fast[len("data: "):])["choices"][0]["delta"] == delta


def test_stream_choice_carries_tokens_whose_text_is_held_back():
    """A delta with tokens but no text (the text may start a stop string) sends no chunk;
    its tokens and logprobs go out with the next text, and a finished choice's repeated end
    (its request's other samples still run) sends nothing again."""
    deltas = [CompletionOutput(0, "", [5], logprobs=[{5: -1.0}]),
              CompletionOutput(0, "", [6], logprobs=[{6: -2.0}]),
              CompletionOutput(0, "ab", [7], logprobs=[{7: -3.0}]),
              CompletionOutput(0, "c", [8], "stop", logprobs=[{8: -4.0}]),
              CompletionOutput(0, "", [], "stop", logprobs=[])]
    state, sent = StreamChoice(), []
    for d in deltas:
        if state.add(d):
            sent.append(state.pop())
    assert [(o.text, o.token_ids, o.finish_reason) for o in sent] == [
        ("", [5], None), ("ab", [6, 7], None), ("c", [8], "stop")]
    assert [lp for o in sent for lp in o.logprobs] == [d.logprobs[0] for d in deltas[:4]]
    assert state.num_tokens == 4 and state.finished


@pytest.mark.parametrize("value", [
    [{"index": 0, "text": "a\u2028\"b\"\n\x00→", "logprobs": None, "x": -0.0}],
    {"f": [1e100, 2.5e-8, float("nan"), float("inf")], "ok": True, "n": None, "big": 2**70},
    "plain → text", 7, None, [], {}])
def test_chunk_encoder_writes_what_json_dumps_writes(value):
    from pagedserve.server.generation import _encode
    assert _encode(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
