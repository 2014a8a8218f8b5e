"""bench serve --structured-outputs json: every request carries a JSON schema whose answer is
never forced to end early (so constrained and free runs generate the same token counts)."""
import argparse

import jsonschema
import xgrammar

from pagedserve.benchmarks import serve


def test_json_workload_asks_for_an_open_ended_schema():
    assert serve._extra(argparse.Namespace(structured_outputs="none")) is None
    extra = serve._extra(argparse.Namespace(structured_outputs="json"))
    schema = extra["response_format"]["json_schema"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"lines": ["a"] * 500}, schema)  # any length validates
    xgrammar.Grammar.from_json_schema(schema)  # and the backend compiles it
