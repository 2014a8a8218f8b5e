"""A Kubernetes API emulator: kmock 0.8's KubernetesEmulator with its gaps filled.

- creates answer 201 and stamp uid, resourceVersion, creationTimestamp, generation (kopf.adopt
  needs the uid), and generateName becomes a name;
- patches bump resourceVersion, and generation on spec changes; a patch of the status
  subresource changes only status, a patch of the main resource (of a kind with a status
  subresource) never status, and the scale subresource reads and writes a Scale;
- lists carry kind and apiVersion; `kubectl get` gets a Table of the CRD's printer columns;
- discovery: built-in resources from kmock's bundled data, custom ones from CRDs (declare_crd);
- PUT answers 405 (nothing here sends it);
- fail_next() makes chosen requests fail (409, 500, ...) to test retries.

It runs no controllers, collects no garbage, selects no labels, serves no OpenAPI and checks
no RBAC. Test support only (needs kmock, from the test extra); see testing.EmulatedCluster.
"""
import asyncio
import datetime
import secrets
import uuid

import attrs
import kmock
from kmock._internal import dicts


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
    _failures: list = attrs.field(factory=list, init=False)

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

    def fail_next(self, method: str, path_suffix: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests of that method whose path ends so with an API error."""
        self._failures.append([method.upper(), path_suffix, status, times])

    def _injected_failure(self, request) -> int | None:
        for failure in self._failures:
            method, suffix, status, times = failure
            if times > 0 and request.method.value == method and request.url.path.endswith(suffix):
                failure[3] -= 1
                return status
        return None

    async def _handle_k8s(self, request):
        status = self._injected_failure(request)
        if status is not None:
            raise kmock.KubernetesError(status, "Injected", f"a failure the test asked for ({status})")
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
