"""The xgrammar backend: compile a GrammarSpec for the model's vocabulary, and a per-request
matcher that accepts sampled tokens and fills the next-token bitmask."""
import re

import torch
import xgrammar as xgr

from pagedserve.engine.structured_output.spec import GrammarSpec

# xgrammar's errors start with "[12:00:00] /project/cpp/file.cc:42: " and sometimes
# "Check failed: (...) is false: "; users need only the reason
_LOCATION = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
_CHECK = re.compile(r"^Check failed: \(.*?\) is false:\s*")


def xgrammar_error(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return _CHECK.sub("", _LOCATION.sub("", text)).strip()


def build_grammar(spec: GrammarSpec) -> xgr.Grammar:
    """The vocabulary-free grammar; ValueError (naming the kind and the reason) if it is bad."""
    try:
        if spec.kind == "json":
            return xgr.Grammar.from_json_schema(spec.text, any_whitespace=spec.any_whitespace)
        if spec.kind == "regex":
            return xgr.Grammar.from_regex(spec.text)
        if spec.kind == "grammar":
            return xgr.Grammar.from_ebnf(spec.text)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"invalid structured_outputs {spec.kind}: {xgrammar_error(e)}") from None
    raise ValueError(f"unknown structured output kind {spec.kind!r}")


class XgrammarGrammar:
    """One request's matcher: where its output stands in the grammar."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        # xgrammar keeps the whole history: rollback of any number of accepted tokens works
        self.matcher = xgr.GrammarMatcher(compiled)
        self.num_processed_tokens = 0

    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False (state unchanged) if the grammar forbids it."""
        if not self.matcher.accept_token(token_id):
            return False
        self.num_processed_tokens += 1
        return True

    def rollback(self, num_tokens: int) -> None:
        """Forget the last num_tokens accepted tokens (outputs discarded and resampled)."""
        if num_tokens:
            self.matcher.rollback(num_tokens)
            self.num_processed_tokens -= num_tokens

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, index)

    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted: nothing may follow."""
        return self.matcher.is_terminated()


class XgrammarBackend:
    """Compiles grammars for one tokenizer (the vocabulary sized as the model's logits)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_token_ids))
        # our thread pool runs compiles in parallel; xgrammar's own threads would only
        # compete with it (and with the model) for this host's cores
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab_size = vocab_size

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        return self.compiler.compile_grammar(build_grammar(spec))

    def new_grammar(self, compiled: xgr.CompiledGrammar) -> XgrammarGrammar:
        return XgrammarGrammar(compiled)

    def allocate_bitmask(self, num_rows: int) -> torch.Tensor:
        return xgr.allocate_token_bitmask(num_rows, self.vocab_size)

    @staticmethod
    def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Forbidden tokens of the given rows become -inf, in place, on the logits' device."""
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True),
                                        indices=rows)


def validate(params, config) -> None:
    """Check a request's constraint without a vocabulary (cheap, in the frontend): ValueError
    naming what is wrong, so a bad schema, regex or grammar is the client's error."""
    from pagedserve.engine.structured_output.spec import grammar_spec
    if params.whitespace_pattern is not None:
        raise ValueError("structured_outputs.whitespace_pattern is not supported by the "
                         "xgrammar backend; use disable_any_whitespace for compact JSON")
    build_grammar(grammar_spec(params, config))
