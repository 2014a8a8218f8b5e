"""Validate a custom resource as an API server with that CRD would: defaults filled in first,
then the structural schema (unknown fields refused), then the CEL rules (x-kubernetes-validations,
with cel-python). CRDs come from this folder (see NOTICE.md) or from the chart."""

import copy
import pathlib

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent
POOL_CRDS = {
    "v1.6.0": HERE / "inference.networking.k8s.io_inferencepools.yaml",
    "v1.5.0": HERE / "gie-v1.5.0" / "inference.networking.k8s.io_inferencepools.yaml",
}
KEDA_CRD = HERE / "keda.sh_scaledobjects.yaml"
LWS_CRD = HERE / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
SERVICE_MONITOR_CRD = HERE / "monitoring.coreos.com_servicemonitors.yaml"


class Invalid(AssertionError):
    """The API server would refuse the object; the message says where and why."""


def load(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def served_schema(crd: dict, api_version: str) -> dict:
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group, (crd["spec"]["group"], api_version)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return served["schema"]["openAPIV3Schema"]


def to_json_schema(node):
    """OpenAPI v3 (structural) as JSON Schema: int-or-string becomes anyOf, nullable allows null,
    and an object with properties refuses unknown fields unless it preserves them."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: to_json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)
        out["anyOf"] = [
            {"type": "integer"},
            {"type": "string", **({"pattern": pattern} if pattern else {})},
        ]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def with_defaults(schema: dict, value):
    """What the API server's defaulting does: absent fields with a `default` get it, recursively."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], v) for v in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = with_defaults(sub, out[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out |= {
            k: with_defaults(extra, v)
            for k, v in out.items()
            if k not in (schema.get("properties") or {})
        }
    return out


def cel_failures(schema: dict, value, path: str = "") -> list[str]:
    """Messages of the CEL rules the (defaulted) value breaks, each with its path."""
    import celpy  # cel-python, from the test extra

    failures = []
    for rule in schema.get("x-kubernetes-validations") or []:
        env = celpy.Environment()
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            failures.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                failures += cel_failures(sub, value[key], f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            failures += cel_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def validate(obj: dict, crd: dict) -> dict:
    """The object as stored (defaults filled in); Invalid when the API server would refuse it."""
    schema = served_schema(crd, obj["apiVersion"])
    assert obj["kind"] == crd["spec"]["names"]["kind"], (obj["kind"], crd["spec"]["names"]["kind"])
    stored = with_defaults(schema, obj)
    json_schema = to_json_schema(schema)
    # metadata is the API server's own to check, not the CRD schema's
    json_schema.setdefault("properties", {}).update(metadata={"type": "object"})
    errors = sorted(
        jsonschema.Draft7Validator(json_schema).iter_errors(stored), key=lambda e: list(e.path)
    )
    if errors:
        raise Invalid(
            "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors)
        )
    failures = cel_failures(schema, stored)
    if failures:
        raise Invalid("; ".join(failures))
    return stored
