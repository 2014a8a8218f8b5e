"""POST /tokenize: a prompt, or messages through the chat template, to token ids (vLLM's)."""
from pagedserve.server.chat import TemplateOptions, render_messages
from pagedserve.server.errors import check_unicode, invalid
from pagedserve.server.protocol import TokenizeRequest, TokenizeResponse
from pagedserve.server.request_fields import check_fields
from pagedserve.server.state import ServerState


def tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    """add_special_tokens defaults to True for a prompt and False for messages (the template
    writes its special tokens itself), as in vLLM."""
    engine = state.engine_or_raise()
    state.check_model(body.model)
    check_fields(body)
    if (body.prompt is None) == (body.messages is None):
        raise invalid("give exactly one of prompt and messages", "prompt")
    tok = engine.tokenizer
    if body.messages is not None:
        special = bool(body.add_special_tokens)
        ids = render_messages(state, body.messages, TemplateOptions(
            body.add_generation_prompt, body.continue_final_message, special,
            body.chat_template_kwargs))
    else:
        special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = tok.encode(check_unicode(body.prompt, "prompt"), add_special_tokens=special)
    strs = tok.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(tokens=ids, count=len(ids), token_strs=strs,
                            max_model_len=engine.config.max_model_len)
