"""Schemathesis against the server's own OpenAPI schema: generated requests (schema-valid and
schema-breaking) to the generation and tokenizer routes never get a 5xx, every response
conforms to the schema, and the server is healthy and idle afterwards.

CI runs FUZZ_EXAMPLES cases per route and mode; PAGEDSERVE_FUZZ_EXAMPLES raises it.
"""
import os
import zlib

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from pagedserve.engine.sampling_params import SamplingParams
from pagedserve.server.app import build_app
from pagedserve.server.state import ServeSettings

FUZZ_EXAMPLES = int(os.environ.get("PAGEDSERVE_FUZZ_EXAMPLES", "30"))
ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
# a short context keeps each generated request's generation cheap on a CPU
FUZZ_ARGS = ["--max-model-len", "64", "--max-n", "8", "--max-num-seqs", "16"]
# positive_data_acceptance is left out on purpose: the schema states types, while value rules
# (ranges, vocabulary, context length) are checked by SamplingParams and answered with 400
CHECKS = [not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance,
          checks.negative_data_rejection]
SAMPLING_FIELDS = set(SamplingParams.__dataclass_fields__) - {"stop_strs"}
SCHEMA = schemathesis.openapi.from_dict(
    build_app(ServeSettings(model="m", served_model_names=["stories260K"])).openapi())


def operation(path: str):
    for result in SCHEMA.include(path=path, method="POST").get_all_operations():
        return result.ok()
    raise LookupError(path)


def reach_engine_mostly(case):
    """Most random values fail a range check (400) or name an unknown model (404). In half of
    the schema-valid cases, drop the fields that would, so those requests reach the engine."""
    body = case.body
    if not isinstance(body, dict) or zlib.crc32(repr(body).encode()) % 2 == 0:
        return case
    body.pop("model", None)
    for key in list(body):
        if key in SAMPLING_FIELDS and not _accepted(key, body[key]):
            body.pop(key)
    for key, limit in (("max_tokens", 32), ("max_completion_tokens", 32), ("n", 8),
                       ("logprobs", 20), ("top_logprobs", 20)):
        if isinstance(body.get(key), int) and not 0 <= body[key] <= limit:
            body.pop(key)
    if isinstance(body.get("min_tokens"), int):
        body.pop("min_tokens")  # only valid up to max_tokens
    return case


def _accepted(key: str, value) -> bool:
    """The engine's own rule (SamplingParams) for one field, so it is not written twice."""
    try:
        SamplingParams(**{key: value})
    except (ValueError, TypeError):
        return False
    return True


@pytest.fixture(scope="module")
def fuzz_server(start_server, template_file):
    srv = start_server([*FUZZ_ARGS, "--chat-template", template_file])
    yield srv
    srv.terminate()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=lambda m: m.name.lower())
@pytest.mark.parametrize("path", ROUTES)
def test_fuzz_route(fuzz_server, path, mode):
    op = operation(path)
    statuses: dict[int, int] = {}

    strategy = op.as_strategy(mode)
    if mode is GenerationMode.POSITIVE:  # a negative case may break only the dropped fields
        strategy = strategy.map(reach_engine_mostly)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=30_000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        response = case.call(base_url=fuzz_server.url, timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)
    run()
    print(f"{path} {mode.name}: {sum(statuses.values())} cases, "
          f"statuses {sorted(statuses.items())}")
    assert httpx.get(fuzz_server.url + "/health", timeout=10).status_code == 200


def test_idle_after_fuzzing(fuzz_server):
    """Runs after the fuzz cases (file order): nothing is left in the engine."""
    assert fuzz_server.wait_metric("pagedserve:kv_cache_usage_perc", lambda v: v == 0) == 0
    assert fuzz_server.metric("pagedserve:num_requests_running") == 0
    assert fuzz_server.metric("pagedserve:num_requests_waiting") == 0
    r = fuzz_server.client().completions.create(model="stories260K", prompt="Once upon a time",
                                                max_tokens=8, temperature=0)
    assert "little girl" in r.choices[0].text
