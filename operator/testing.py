"""Test support: a Kubernetes API emulator for running the real operator without a cluster.

Like kopf.testing, this module is for tests only and needs the test extra (kmock); nothing in
the operator imports it. It fills the gaps of kmock 0.8's KubernetesEmulator:

- creates answer 201 and stamp uid, resourceVersion, creationTimestamp, generation (kopf.adopt
  needs the uid), and generateName becomes a name;
- patches bump resourceVersion, and generation on spec changes; a patch of the status
  subresource changes only status, a patch of the main resource (of a kind with a status
  subresource) never status, and a patch of the scale subresource only spec.replicas;
- lists carry kind and apiVersion;
- built-in resources come from kmock's bundled discovery data, custom ones from CRD files;
- PUT answers 405 (nothing here sends it).

What it does not do: run controllers (no pods, no Deployment status: tests patch deployments/
status themselves), collect garbage (tests assert owner references), select by label, serve
OpenAPI (use kubectl with --validate=false), or check RBAC (see EmulatedCluster.api_calls).

    with EmulatedCluster(crds=[CRD_PATH]) as cluster, running_operator(cluster):
        cluster.kube.create("LLMDeployment", "default", {...})
        ...
        assert cluster.api_calls(OPERATOR_AGENTS) <= allowed
"""
import asyncio
import contextlib
import copy
import datetime
import pathlib
import secrets
import tempfile
import threading
import time
import uuid
import warnings
from typing import Iterator, NamedTuple

import attrs
import kmock
import yaml
from kmock._internal import dicts

from pagedserve.operator.kube import KINDS, Kube

# User-Agent prefixes of the operator's own requests: kopf's and our Kube's
OPERATOR_AGENTS = ("kopf/", "pagedserve-operator/")
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch",
         "DELETE": "delete"}


class ApiCall(NamedTuple):
    """One kind of request, in RBAC terms: apiGroup, resource[/subresource], verb."""
    group: str
    resource: str
    verb: str


class _RequestLog(list):
    """All requests, but iterating yields only those in flight.

    kmock matches each request against its reactions by scanning every request recorded so far,
    which makes a long test quadratic; the scan only needs to find the request being served.
    """

    def __init__(self):
        super().__init__()
        self.in_flight: list = []

    def append(self, request) -> None:
        super().append(request)
        self.in_flight.append(request)

    def done(self, request) -> None:
        self.in_flight = [r for r in self.in_flight if r is not request]

    def __iter__(self):
        return iter(list(self.in_flight))

    def everything(self) -> list:
        return list(list.__iter__(self))


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps listed in the module docstring filled."""
    _gate: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _version: int = attrs.field(default=0, init=False)
    _scale_paths: dict = attrs.field(factory=dict, init=False)
    _columns: dict = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._requests = _RequestLog()

    def declare_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        spec_names = spec["names"]
        for ver in spec["versions"]:
            self.resources[f"{spec['group']}/{ver['name']}/{spec_names['plural']}"] = kmock.ResourceInfo(
                kind=spec_names["kind"], singular=spec_names.get("singular"),
                namespaced=spec["scope"] == "Namespaced", shortnames=spec_names.get("shortNames", []),
                categories=spec_names.get("categories", []), subresources=ver.get("subresources", {}).keys(),
                verbs={"get", "list", "watch", "create", "patch", "delete", "update", "deletecollection"})
            if ver.get("additionalPrinterColumns"):
                self._columns[kmock.resource(spec["group"], ver["name"], spec_names["plural"])] = \
                    ver["additionalPrinterColumns"]
            scale = ver.get("subresources", {}).get("scale")
            if scale:
                key = kmock.resource(spec["group"], ver["name"], spec_names["plural"])
                self._scale_paths[key] = (scale["specReplicasPath"], scale["statusReplicasPath"],
                                          scale.get("labelSelectorPath"))

    def _info(self, resource) -> kmock.ResourceInfo:
        return self.resources[resource] if resource in self.resources else kmock.ResourceInfo()

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _handle(self, request):
        try:
            return await self._handle_k8s(request)
        finally:
            self._requests.done(request)

    async def _handle_k8s(self, request):
        if request.resource is not None and request.method == kmock.method.PUT:
            raise kmock.KubernetesError(405, "MethodNotAllowed", "the emulator serves no PUT; send a PATCH")
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return await super()._handle(request)
        async with self._gate:  # no other write between stamping and storing
            async with self._lock:
                if request.action == kmock.action.CREATE:
                    self._stamp_create(request)
                else:
                    self._stamp_update(request)
            return await super()._handle(request)

    def _stamp_create(self, request) -> None:
        data, now = request.data, datetime.datetime.now(datetime.timezone.utc)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(), generation=1,
                    creationTimestamp=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if "status" in self._info(request.resource).subresources:
            data.pop("status", None)

    def _stamp_update(self, request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted or not isinstance(request.data, dict):
            return  # kmock answers 404 (or applies a JSON patch as it is)
        current, patch = self.objects[key].raw, dict(request.data)
        if request.subresource == "status":
            patch = {"status": patch.get("status")}
        elif request.subresource == "scale":
            replicas = (patch.get("spec") or {}).get("replicas")
            patch = {"spec": {"replicas": replicas}} if replicas is not None else {}
        elif request.subresource is None and "status" in self._info(request.resource).subresources:
            patch.pop("status", None)
        meta = {k: v for k, v in (patch.get("metadata") or {}).items()
                if k not in ("uid", "creationTimestamp", "generation", "resourceVersion")}
        generation = current.get("metadata", {}).get("generation", 1)
        if "spec" in patch and dicts.patch_dict(current, {"spec": patch["spec"]}).get("spec") != current.get("spec"):
            generation += 1
        patch["metadata"] = {**meta, "resourceVersion": self._next_version(), "generation": generation}
        object.__setattr__(request, "data", patch)

    async def _serve_version(self, request):
        # as a real API server lists them: subresources have no short names, and /scale is a Scale
        result = await super()._serve_version(request)
        for entry in result["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
                if entry["name"].endswith("/scale"):
                    entry.update(kind="Scale", group="autoscaling", version="v1")
        return result

    def _scale(self, request, obj: dict) -> dict:
        """The autoscaling/v1 Scale view of an object (the CRD's scale paths, else spec/status.replicas)."""
        spec_path, status_path, selector_path = self._scale_paths.get(
            request.resource, (".spec.replicas", ".status.replicas", ".status.selector"))
        meta = {k: obj["metadata"].get(k) for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")}
        return {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": meta,
                "spec": {"replicas": _path(obj, spec_path) or 0},
                "status": {"replicas": _path(obj, status_path) or 0, "selector": _path(obj, selector_path) or ""}}

    def _wants_table(self, request) -> bool:
        return "as=Table" in request.headers.get("Accept", "") and request.resource in self._columns

    def _table(self, request, objs: list[dict]) -> dict:
        """What `kubectl get` shows: the CRD's printer columns, as the API server renders them."""
        columns = [c for c in self._columns[request.resource] if c["jsonPath"] != ".metadata.creationTimestamp"]
        return {"apiVersion": "meta.k8s.io/v1", "kind": "Table", "metadata": {"resourceVersion": str(self._version)},
                "columnDefinitions": [{"name": "Name", "type": "string", "format": "name"}]
                + [{"name": c["name"], "type": c["type"], "format": ""} for c in columns]
                + [{"name": "Age", "type": "string", "format": ""}],
                "rows": [{"cells": [o["metadata"]["name"]] + [_path(o, c["jsonPath"]) for c in columns]
                          + [_age(o["metadata"].get("creationTimestamp"))],
                          "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                     "metadata": o["metadata"]}} for o in objs]}

    async def _serve_fetch(self, request):
        obj = await super()._serve_fetch(request)
        if request.subresource == "scale":
            return self._scale(request, obj)
        return self._table(request, [obj]) if self._wants_table(request) and not request.subresource else obj

    async def _serve_update(self, request):
        obj = await super()._serve_update(request)
        return self._scale(request, obj) if request.subresource == "scale" else obj

    async def _serve_create(self, request):
        return kmock.Response(status=201, payload=await super()._serve_create(request))

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        if self._wants_table(request):
            return self._table(request, result["items"])
        res = request.resource
        api_version = f"{res.group}/{res.version}" if res.group else res.version
        kind = (self._info(res).kind or "Unknown") + "List"
        return {"apiVersion": api_version, "kind": kind, **result,
                "metadata": {"resourceVersion": str(self._version)}}


def _path(obj, json_path: str | None):
    """The value at a simple JSON path like .spec.replicas, or None."""
    if not json_path:
        return None
    for key in json_path.strip(".").split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


class EmulatedCluster:
    """A KubeEmulator served on localhost from its own thread and event loop.

    Tests stay synchronous: subprocesses (kubectl), blocking clients and a KopfRunner can all
    talk to it while the test waits. `kubeconfig` is a file pointing at it; `kube` is a client
    for the test itself (its requests are not the operator's, see api_calls).
    """

    def __init__(self, crds: list[str | pathlib.Path] = ()):
        self._crds = [yaml.safe_load(pathlib.Path(p).read_text()) for p in crds]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="kube-emulator-")
        self.kubeconfig = str(pathlib.Path(self._tmp.name) / "kubeconfig")
        self.url = ""

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with KubeEmulator() as emulator, kmock.Server(emulator) as server:
            with warnings.catch_warnings():  # kmock 0.8 reads its data with a deprecated call
                warnings.simplefilter("ignore", DeprecationWarning)
                emulator.resources.load_bundled()
            for crd in self._crds:
                emulator.declare_crd(crd)
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "EmulatedCluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator",
                  "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                  "users": [{"name": "tester", "user": {"token": "emulator"}}],
                  "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}]}
        pathlib.Path(self.kubeconfig).write_text(yaml.safe_dump(config))
        from kubernetes import client
        cfg = client.Configuration(host=self.url)
        self.kube = Kube(client.ApiClient(cfg))
        self.kube.api.user_agent = "emulated-cluster-test/1"
        return self

    def __exit__(self, *exc) -> None:
        self.kube.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._tmp.cleanup()

    def _sync(self, fn):
        """Run fn() on the emulator's loop under its lock: a consistent snapshot."""
        async def locked():
            async with self.emulator._lock:
                return fn()
        return asyncio.run_coroutine_threadsafe(locked(), self._loop).result(30)

    def objects(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Deep copies of the live objects of a kind (see kube.KINDS), optionally in one namespace."""
        group, version, plural = KINDS[kind]

        def pick():
            return [copy.deepcopy(obj.raw) for (res, ns, _), obj in self.emulator.objects.items()
                    if (res.group, res.version, res.plural) == (group, version, plural)
                    and not obj.deleted and namespace in (None, ns)]
        return self._sync(pick)

    def requests(self) -> list:
        """Every request served so far (kmock Request objects)."""
        return self._sync(lambda: self.emulator._requests.everything())

    def api_calls(self, agents: tuple[str, ...] = OPERATOR_AGENTS, since: int = 0) -> set[ApiCall]:
        """(apiGroup, resource, verb) of every resource request (from the since-th on) whose
        User-Agent starts with one of agents: compare it with a ClusterRole's rules. Discovery
        (/api, /apis) is left out: every authenticated user may read it."""
        calls = set()
        for req in self.requests()[since:]:
            agent = req.headers.get("User-Agent", "")
            if req.resource is None or req.resource.plural is None or not agent.startswith(agents):
                continue
            verb = "update" if req.method == kmock.method.PUT else VERBS.get(getattr(req.action, "name", ""))
            resource = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
            calls.add(ApiCall(req.resource.group or "", resource, verb or req.method.value.lower()))
        return calls


@contextlib.contextmanager
def running_operator(cluster: EmulatedCluster, namespaces: tuple[str, ...] = (),
                     timeout: float = 30) -> Iterator:
    """The real operator (kopf run -m pagedserve.operator.handlers, standalone) in a thread,
    pointed at the cluster through $KUBECONFIG (set it first, e.g. with monkeypatch.setenv).
    Yields the kopf.testing.KopfRunner; leaving the block stops the operator."""
    import kopf
    from kopf.testing import KopfRunner
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # kmock serves no CRD objects to scan
    scope = [arg for ns in namespaces for arg in ("-n", ns)] or ["-A"]
    args = ["run", "--standalone", *scope, "-m", "pagedserve.operator.handlers"]
    with KopfRunner(args, settings=settings, timeout=timeout) as runner:
        yield runner


def llmdeployment(name: str, namespace: str = "default", **spec) -> dict:
    """An LLMDeployment body; the spec defaults to the bundled model on CPU."""
    spec = {"model": "stories260K", "accelerator": "cpu", **spec}
    return {"apiVersion": "pagedserve.io/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def condition(body: dict | None, kind: str) -> dict:
    """The status condition of that type, or {}."""
    for cond in ((body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def wait_for(check, timeout: float = 20.0, interval: float = 0.1, what: str = "a condition"):
    """Poll check() until it returns something truthy and return that; AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
