"""Structured outputs, engine side: params rules, compile cache off the caller's thread, and
constrained decoding of the bundled model's vocabulary with a random logits source (the text
must validate, match, or be one of the choices, whatever the logits prefer)."""
import json
import re
import threading

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer

from pagedserve.engine.structured_output import StructuredOutputsConfig, StructuredOutputsParams
from pagedserve.engine.structured_output.manager import StructuredOutputManager
from pagedserve.engine.structured_output.reasoning import ReasoningEnd
from pagedserve.engine.structured_output.spec import grammar_spec
from pagedserve.engine.structured_output.xgrammar_backend import validate
from tests.conftest import STORIES

VOCAB, EOS = 512, 2
PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pet": {"enum": ["cat", "dog"]},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
          "required": ["name", "age", "pet", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(STORIES)


def manager(tokenizer, **config) -> StructuredOutputManager:
    return StructuredOutputManager(StructuredOutputsConfig(**config), tokenizer, VOCAB,
                                   frozenset({EOS}))


def decode(mgr, tokenizer, params, seed: int, greedy: bool = False, max_tokens: int = 200,
           bias: dict[int, float] | None = None) -> tuple[str, bool]:
    """Sample under the constraint from seeded random logits; (text, grammar finished)."""
    so = mgr.grammar_init(params, [1])
    so.future.result(timeout=30)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max_tokens):
        logits = torch.randn(1, VOCAB, generator=gen) * 3
        for tok, b in (bias or {}).items():
            logits[0, tok] += b
        mgr.apply_bitmask(logits, [so])
        probs = torch.softmax(logits, -1)
        tok = int(probs.argmax() if greedy else torch.multinomial(probs, 1, generator=gen))
        assert mgr.accept_token(so, tok)
        if so.grammar.is_terminated():
            assert tok == EOS  # the grammar ends by accepting the stop token
            return tokenizer.decode(out), True
        out.append(tok)
    return tokenizer.decode(out), False


def test_exactly_one_constraint_named():
    with pytest.raises(ValueError, match="exactly one of json, regex, choice, grammar, "
                                         "json_object; none is given"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match=r"2 are given \(regex, choice\)"):
        StructuredOutputsParams(regex="a+", choice=["a"])
    with pytest.raises(ValueError, match="structured_outputs.choice"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(ValueError, match="structured_outputs.json is not valid JSON"):
        StructuredOutputsParams(json="{nope")
    assert StructuredOutputsParams(json_object=True).kind == "json_object"


def test_config_rejects_unknown_backend_and_fields():
    compact = StructuredOutputsConfig.from_value({"disable_any_whitespace": True})
    assert compact.disable_any_whitespace
    with pytest.raises(ValueError, match="backend"):
        StructuredOutputsConfig(backend="outlines")
    with pytest.raises(ValueError, match="'whitespace'"):
        StructuredOutputsConfig.from_value({"whitespace": True})


@pytest.mark.parametrize("params, needle", [
    (StructuredOutputsParams(json={"type": "strng"}), "invalid structured_outputs json"),
    (StructuredOutputsParams(json={"$ref": "#/defs/missing"}), "invalid structured_outputs json"),
    (StructuredOutputsParams(regex="[a-"), "invalid structured_outputs regex"),
    (StructuredOutputsParams(grammar="root ::= undefined_rule"),
     "invalid structured_outputs grammar"),
    (StructuredOutputsParams(json_object=True, whitespace_pattern=" *"), "whitespace_pattern"),
])
def test_invalid_constraints_are_value_errors(params, needle):
    with pytest.raises(ValueError, match=needle) as e:
        validate(params, StructuredOutputsConfig())
    assert "/project/" not in str(e.value)  # the reason, not xgrammar's source location


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_output_validates(tokenizer, seed):
    mgr = manager(tokenizer, disable_any_whitespace=True)
    text, done = decode(mgr, tokenizer, StructuredOutputsParams(json=PERSON), seed)
    assert done
    jsonschema.validate(json.loads(text), PERSON)
    assert text == json.dumps(json.loads(text))  # compact: only the fixed ", " and ": "


def test_json_object_and_greedy(tokenizer):
    mgr = manager(tokenizer, disable_any_whitespace=True)
    text, done = decode(mgr, tokenizer, StructuredOutputsParams(json_object=True), 0,
                        greedy=True, max_tokens=400, bias={EOS: 4.0})
    assert done and isinstance(json.loads(text), dict)


@pytest.mark.parametrize("seed", range(3))
def test_regex_and_choice(tokenizer, seed):
    mgr = manager(tokenizer)
    pattern = r"(cat|dog)-[0-9]{2,4}"
    text, done = decode(mgr, tokenizer, StructuredOutputsParams(regex=pattern), seed)
    assert done and re.fullmatch(pattern, text)
    choices = ["positive", "negative", 'say "hi"\\n']
    text, done = decode(mgr, tokenizer, StructuredOutputsParams(choice=choices), seed)
    assert done and text in choices


def test_any_whitespace_lets_newlines_run_on_and_disable_stops_it(tokenizer):
    """xgrammar's default whitespace rule allows a model that likes newlines to emit them
    until max_tokens; disable_any_whitespace (server-wide or per request) makes JSON compact."""
    newline = tokenizer.convert_tokens_to_ids("<0x0A>")
    bias = {newline: 30.0}
    loose = manager(tokenizer)
    text, done = decode(loose, tokenizer, StructuredOutputsParams(json=PERSON), 0, max_tokens=60,
                        bias=bias)
    assert not done and text.count("\n") > 40
    for mgr, params in ((manager(tokenizer, disable_any_whitespace=True),
                         StructuredOutputsParams(json=PERSON)),
                        (loose, StructuredOutputsParams(json=PERSON, disable_any_whitespace=True))):
        text, done = decode(mgr, tokenizer, params, 0, bias=bias)
        assert done and text == json.dumps(json.loads(text))


def test_unconstrained_rows_in_a_mixed_batch_are_untouched(tokenizer):
    mgr = manager(tokenizer)
    so = mgr.grammar_init(StructuredOutputsParams(choice=["yes", "no"]), [1])
    so.future.result()
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    mgr.apply_bitmask(logits, [None, so, None])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all("yes".startswith(s) or "no".startswith(s)
                           for s in (tokenizer.decode([t]).strip() for t in allowed))


def test_equal_specs_share_one_compile_and_key_order_does_not_matter(tokenizer):
    mgr = manager(tokenizer)
    a = mgr.grammar_init(StructuredOutputsParams(json={"type": "object", "required": []}), [1])
    b = mgr.grammar_init(StructuredOutputsParams(json='{"required": [], "type": "object"}'), [1])
    assert a.future is b.future
    assert a.grammar is not b.grammar  # but each request has its own matcher
    c = mgr.grammar_init(StructuredOutputsParams(json={"type": "object"},
                                                 disable_any_whitespace=True), [1])
    assert c.future is not a.future


def test_compile_runs_off_the_callers_thread(tokenizer, monkeypatch):
    """A slow compile must not block grammar_init (called from the step loop)."""
    mgr = manager(tokenizer)
    gate, threads = threading.Event(), []
    real = mgr.backend.compile

    def slow(spec):
        threads.append(threading.current_thread())
        assert gate.wait(10)
        return real(spec)
    monkeypatch.setattr(mgr.backend, "compile", slow)
    so = mgr.grammar_init(StructuredOutputsParams(regex="a+"), [1])
    assert not so.is_ready()
    gate.set()
    so.future.result(timeout=10)
    assert so.is_ready() and threads[0] is not threading.current_thread()


def test_rollback_restores_the_matcher(tokenizer):
    mgr = manager(tokenizer)
    so = mgr.grammar_init(StructuredOutputsParams(regex=r"ab+c"), [1])
    ids = tokenizer.convert_tokens_to_ids(list("abbb"))
    g = so.grammar
    for t in ids[:1]:
        assert g.accept_token(t)
    after_first = mgr.backend.allocate_bitmask(1)
    g.fill_bitmask(after_first, 0)
    for t in ids[1:]:
        assert g.accept_token(t)
    g.rollback(len(ids) - 1)
    again = mgr.backend.allocate_bitmask(1)
    g.fill_bitmask(again, 0)
    assert torch.equal(after_first, again) and g.num_processed_tokens == 1


def test_grammar_refuses_a_forbidden_token(tokenizer):
    mgr = manager(tokenizer)
    so = mgr.grammar_init(StructuredOutputsParams(choice=["yes"]), [1])
    assert not mgr.accept_token(so, tokenizer.convert_tokens_to_ids("<0x0A>"))
    assert so.grammar.num_processed_tokens == 0


class _ThinkTokenizer:
    def get_vocab(self):
        return {"<think>": 600, "</think>": 601, "a": 5}


def test_constraint_waits_for_the_end_of_thinking(tokenizer):
    mgr = manager(tokenizer)
    mgr.reasoning_end = ReasoningEnd.for_parser("qwen3", _ThinkTokenizer())
    so = mgr.grammar_init(StructuredOutputsParams(choice=["yes"]), [1, 600])
    logits = torch.zeros(1, VOCAB)
    mgr.apply_bitmask(logits, [so])
    assert torch.isfinite(logits).all()  # thinking: free text
    assert mgr.accept_token(so, 77) and mgr.accept_token(so, 601)
    mgr.apply_bitmask(logits, [so])
    assert not torch.isfinite(logits).all()
    # a template that closed the thinking in the prompt (thinking disabled) starts constrained
    assert mgr.grammar_init(StructuredOutputsParams(choice=["yes"]), [600, 601]).reasoning_ended


def test_reasoning_parser_needs_its_tokens(tokenizer):
    with pytest.raises(ValueError, match="lacks <think> and </think>"):
        ReasoningEnd.for_parser("deepseek_r1", tokenizer)
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        ReasoningEnd.for_parser("nope", _ThinkTokenizer())


def test_spec_of_choice_escapes_quotes(tokenizer):
    spec = grammar_spec(StructuredOutputsParams(choice=['a"b']), StructuredOutputsConfig())
    assert spec.kind == "grammar" and '"a\\"b"' in spec.text
