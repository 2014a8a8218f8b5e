"""The LLMDeployment spec: the operator's parser agrees with the CRD, and bad values get clear
errors."""

from decimal import Decimal

import pytest
import yaml

from pagedserve.operator.quantity import parse_quantity, same_quantity
from pagedserve.operator.spec import KV_CACHE_DTYPES, SPEC_FIELDS, SpecError, parse_spec


def spec_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_minimal_spec_gets_the_documented_defaults():
    spec = parse_spec({"model": "Qwen/Qwen2-7B-Instruct"})
    assert (spec.replicas, spec.tensor_parallel_size, spec.accelerator) == (1, 1, "amd")
    assert (spec.service_type, spec.service_port) == ("ClusterIP", 8000)
    assert spec.model_cache is None and spec.autoscaling is None and spec.hf_token_secret is None
    assert spec.gpu_resource == "amd.com/gpu"


def test_operator_defaults_equal_the_crd_defaults(with_crd_defaults):
    # the API server fills the CRD's defaults in; the operator must reach the same spec without them
    for raw in (
        {"model": "m"},
        {
            "model": "m",
            "modelCache": {"size": "1Gi"},
            "autoscaling": {"maxReplicas": 3},
            "service": {},
        },
    ):
        defaulted = with_crd_defaults(raw)
        assert defaulted != raw
        assert parse_spec(defaulted) == parse_spec(raw)


def test_parser_and_crd_know_the_same_fields(crd):
    schema = spec_schema(crd)
    assert set(schema["properties"]) == set(SPEC_FIELDS)
    for field in ("engine", "modelCache", "autoscaling", "service", "podDisruptionBudget"):
        known = {k: None for k in schema["properties"][field]["properties"]}
        try:
            parse_spec({"model": "m", field: known})
        except SpecError as exc:  # a missing required field is fine here, an unknown one is not
            assert "unknown field" not in str(exc)
        with pytest.raises(SpecError, match="unknown field"):
            parse_spec({"model": "m", field: {"surelyNotAField": 1, **known}})


def test_kv_cache_dtype_choices_are_the_engines(crd):
    # the operator keeps its own copy (it imports nothing of the engine): all three must agree
    from pagedserve.engine.config import KV_CACHE_DTYPES as ENGINE_KV_CACHE_DTYPES

    engine = spec_schema(crd)["properties"]["engine"]["properties"]
    assert tuple(engine["kvCacheDtype"]["enum"]) == KV_CACHE_DTYPES == ENGINE_KV_CACHE_DTYPES
    chosen = parse_spec({"model": "m", "engine": {"kvCacheDtype": "bfloat16"}})
    assert chosen.engine.kv_cache_dtype == "bfloat16"
    assert parse_spec({"model": "m"}).engine.kv_cache_dtype is None


def test_examples_are_valid_llmdeployments(examples, crd_validator):
    models = {}
    for path in examples:
        body = yaml.safe_load(path.read_text())
        crd_validator.validate(body)
        spec = parse_spec(body["spec"])
        models[spec.model] = (spec.tensor_parallel_size, spec.accelerator)
    assert models == {
        "Qwen/Qwen2-7B-Instruct": (1, "amd"),
        "01-ai/Yi-34B-Chat": (4, "amd"),
        "meta-llama/Meta-Llama-3-70B-Instruct": (4, "amd"),
        "stories260K": (1, "cpu"),
        "meta-llama/Llama-3.1-405B-Instruct": (8, "amd"),
    }


def test_crd_schema_rejects_what_the_operator_rejects(crd_validator):
    import jsonschema

    for spec in (
        {"model": "m", "tensorParallelSize": 0},
        {"model": "m", "accelerator": "tpu"},
        {"model": "m", "modelCache": {"size": "lots"}},
        {"model": ""},
        {"model": "m", "typo": 1},
        {"model": "m", "engine": {"kvCacheDtype": "fp8"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            crd_validator.validate(
                {
                    "apiVersion": "pagedserve.io/v1alpha1",
                    "kind": "LLMDeployment",
                    "metadata": {"name": "x"},
                    "spec": spec,
                }
            )


@pytest.mark.parametrize(
    "spec, reason, fragment",
    [
        ({}, "InvalidSpec", "spec.model is required"),
        (
            {"model": "m", "tensorParallelSize": 0},
            "InvalidSpec",
            "tensorParallelSize must be an integer >= 1, got 0",
        ),
        (
            {"model": "m", "tensorParallelSize": "4"},
            "InvalidSpec",
            "tensorParallelSize must be an integer, got '4'",
        ),
        (
            {"model": "m", "accelerator": "tpu"},
            "InvalidSpec",
            "accelerator must be one of amd, nvidia, cpu, got 'tpu'",
        ),
        (
            {"model": "m", "modelCache": {"size": "lots"}},
            "InvalidSpec",
            "modelCache.size: not a Kubernetes quantity: 'lots'",
        ),
        ({"model": "m", "modelCache": {}}, "InvalidSpec", "needs size"),
        ({"model": "m", "replicas": -1}, "InvalidSpec", "replicas must be an integer >= 0"),
        (
            {"model": "m", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "InvalidSpec",
            "maxReplicas (2) must be >= minReplicas (3)",
        ),
        (
            {"model": "m", "engine": {"gpuMemoryUtilization": 1.5}},
            "InvalidSpec",
            "gpuMemoryUtilization must be in (0, 1]",
        ),
        ({"model": "m", "engine": {"dtype": "int3"}}, "InvalidSpec", "dtype must be one of"),
        (
            {"model": "m", "engine": {"kvCacheDtype": "fp8"}},
            "InvalidSpec",
            "kvCacheDtype must be one of auto, bfloat16, got 'fp8'",
        ),
        (
            {"model": "m", "engine": {"extraArgs": ["--api-key", "secret"]}},
            "InvalidSpec",
            "may not set --api-key",
        ),
        (
            {"model": "m", "engine": {"extraArgs": ["--port=9000"]}},
            "InvalidSpec",
            "may not set --port",
        ),
        (
            {"model": "m", "engine": {"kvCacheDtype": "bfloat16",
                                      "extraArgs": ["--kv-cache-dtype", "auto"]}},
            "InvalidSpec",
            "extraArgs sets --kv-cache-dtype and spec.engine.kvCacheDtype sets it too",
        ),
        (
            {"model": "m", "engine": {"maxNumSeqs": 8, "extraArgs": ["--max-num-seqs=64"]}},
            "InvalidSpec",
            "extraArgs sets --max-num-seqs and spec.engine.maxNumSeqs sets it too",
        ),
        (
            {"model": "m", "engine": {"enablePrefixCaching": False,
                                      "extraArgs": ["--enable-prefix-caching"]}},
            "InvalidSpec",
            "extraArgs sets --enable-prefix-caching and spec.engine.enablePrefixCaching",
        ),
        (
            {"model": "m", "servedModelName": "a",
             "engine": {"extraArgs": ["--served-model-name", "b"]}},
            "InvalidSpec",
            "extraArgs sets --served-model-name and spec.servedModelName sets it too",
        ),
        (
            {"model": "m", "env": [{"name": "HF_TOKEN", "value": "x"}]},
            "InvalidSpec",
            "may not set HF_TOKEN",
        ),
        ({"model": "m", "hfTokenSecret": {"name": "s"}}, "InvalidSpec", "needs both name and key"),
        (
            {"model": "m", "tensorParallelSize": 4, "resources": {"limits": {"amd.com/gpu": 2}}},
            "InvalidSpec",
            "is 2 but each pod runs 4 ranks",
        ),
        (
            {"model": "m", "resources": {"limits": {"memory": "a lot"}}},
            "InvalidSpec",
            "resources.limits['memory']",
        ),
        (
            {"model": "m", "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
            "InvalidSpec",
            "exactly one",
        ),
        ({"model": "m", "service": {"port": 70000}}, "InvalidSpec", "port must be <= 65535"),
        (
            {"model": "m", "tensorParalelSize": 2},
            "InvalidSpec",
            "unknown field(s) tensorParalelSize",
        ),
        ({"model": "m", "replicas": True}, "InvalidSpec", "replicas must be an integer, got True"),
        (
            {"model": "m", "engine": {"gpuMemoryUtilization": "high"}},
            "InvalidSpec",
            "must be a number, got 'high'",
        ),
        (
            {"model": "m", "engine": {"kvCacheMemory": "lots"}},
            "InvalidSpec",
            "kvCacheMemory: not a Kubernetes quantity",
        ),
        ({"model": "m", "service": []}, "InvalidSpec", "spec.service must be an object, got []"),
    ],
)
def test_bad_specs_name_the_field(spec, reason, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.reason == reason
    assert fragment in str(info.value)


def test_gpu_limit_equal_to_tp_is_accepted():
    spec = parse_spec(
        {
            "model": "m",
            "tensorParallelSize": 4,
            "accelerator": "nvidia",
            "resources": {"limits": {"nvidia.com/gpu": "4", "memory": "64Gi"}},
        }
    )
    assert spec.resources["limits"]["memory"] == "64Gi"


@pytest.mark.parametrize(
    "text, value",
    [
        ("200Gi", 200 * 2**30),
        ("1.5T", Decimal("1.5e12")),
        ("500m", Decimal("0.5")),
        ("4", 4),
        ("1e3", 1000),
        (8, 8),
        ("128Mi", 128 * 2**20),
    ],
)
def test_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "12 GB", "1.2.3", "-", "10XB", True])
def test_bad_quantities(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_quantities_compare_by_value():
    assert same_quantity("1024Mi", "1Gi") and same_quantity("1000m", "1") and same_quantity(4, "4")
    assert not same_quantity("1Gi", "1G") and not same_quantity("x", "x")


def test_extra_args_may_set_an_engine_flag_whose_field_is_unset():
    # written before spec.engine had the field (or by habit): still one value, so it stands
    from pagedserve.operator.pod import server_args
    spec = parse_spec({"model": "m", "engine": {"extraArgs": ["--kv-cache-dtype", "bfloat16"]}})
    args = server_args(spec)
    assert args.count("--kv-cache-dtype") == 1
    assert args[args.index("--kv-cache-dtype") + 1] == "bfloat16"
