"""A Kubernetes API emulator: kmock 0.8's KubernetesEmulator with its gaps filled.

- creates answer 201 and stamp uid, resourceVersion, creationTimestamp, generation (kopf.adopt
  needs the uid), and generateName becomes a name;
- patches bump resourceVersion, and generation on spec changes; a patch of the status
  subresource changes only status, a patch of the main resource (of a kind with a status
  subresource) never status, and the scale subresource reads and writes a Scale;
- lists carry kind and apiVersion; `kubectl get` gets a Table of the CRD's printer columns;
- discovery: built-in resources from kmock's bundled data, custom ones from CRDs (declare_crd);
- a watch from a resourceVersion replays only what changed since (the latest state of each
  object, deletions too), not every object again, and misses no event between its replay and
  the live stream; deletions bump resourceVersion;
- PUT answers 405 (nothing here sends it); a resource neither bundled nor declared answers 404,
  as an API server without that CRD does;
- fail_next() makes chosen requests fail (409, 500, ...) to test retries; `faults` (a
  faults.Faults) injects conflicts, errors, lost answers, delays and dropped watches at random.

It runs no controllers, collects no garbage, selects no labels, serves no OpenAPI and checks
no RBAC. Test support only (needs kmock, from the test extra); see cluster.EmulatedCluster.
"""

import asyncio
import datetime
import secrets
import uuid

import attrs
import kmock
from kmock._internal import dicts

from . import parts
from .faults import Fault, Faults


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps listed in the module docstring filled."""

    _gate: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _version: int = attrs.field(default=0, init=False)
    _scale_paths: dict = attrs.field(factory=dict, init=False)
    _columns: dict = attrs.field(factory=dict, init=False)
    _failures: list = attrs.field(factory=list, init=False)
    faults: Faults | None = attrs.field(default=None, init=False)
    _watch_faults: dict = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._requests = parts.RequestLog()

    def declare_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        spec_names = spec["names"]
        for ver in spec["versions"]:
            self.resources[f"{spec['group']}/{ver['name']}/{spec_names['plural']}"] = (
                kmock.ResourceInfo(
                    kind=spec_names["kind"],
                    singular=spec_names.get("singular"),
                    namespaced=spec["scope"] == "Namespaced",
                    shortnames=spec_names.get("shortNames", []),
                    categories=spec_names.get("categories", []),
                    subresources=ver.get("subresources", {}).keys(),
                    verbs={
                        "get",
                        "list",
                        "watch",
                        "create",
                        "patch",
                        "delete",
                        "update",
                        "deletecollection",
                    },
                )
            )
            if ver.get("additionalPrinterColumns"):
                self._columns[kmock.resource(spec["group"], ver["name"], spec_names["plural"])] = (
                    ver["additionalPrinterColumns"]
                )
            scale = ver.get("subresources", {}).get("scale")
            if scale:
                key = kmock.resource(spec["group"], ver["name"], spec_names["plural"])
                self._scale_paths[key] = (
                    scale["specReplicasPath"],
                    scale["statusReplicasPath"],
                    scale.get("labelSelectorPath"),
                )

    def _info(self, resource) -> kmock.ResourceInfo:
        return self.resources[resource] if resource in self.resources else kmock.ResourceInfo()

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _handle(self, request):
        try:
            fault = self._draw(request)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                raise kmock.KubernetesError(
                    fault.status, "Injected", f"a fault injected at random ({fault.status})"
                )
            response = await self._handle_k8s(request)
            if fault.lost:  # done, but the client hears otherwise
                return await self._render_error(
                    kmock.KubernetesError(500, "Injected", "the answer was lost")
                )
            return response
        finally:
            self._requests.done(request)
            self._watch_faults.pop(request.id, None)

    def _draw(self, request) -> Fault:
        if self.faults is None or request.resource is None:
            return Fault()
        watch = request.action == kmock.action.WATCH
        fault = self.faults.draw(
            request.method.value, request.url.path, request.headers.get("User-Agent", ""), watch
        )
        if watch:
            self._watch_faults[request.id] = fault
        return fault

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
            raise kmock.KubernetesError(
                status, "Injected", f"a failure the test asked for ({status})"
            )
        if (
            request.resource is not None
            and request.resource.plural
            and request.resource not in self.resources
        ):
            # as an API server without that CRD: no such resource, whatever the verb
            raise kmock.KubernetesError(
                404, "NotFound", "the server could not find the requested resource"
            )
        if request.resource is not None and request.method == kmock.method.PUT:
            raise kmock.KubernetesError(
                405, "MethodNotAllowed", "the emulator serves no PUT; send a PATCH"
            )
        writes = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
        if request.resource is None or request.action not in writes:
            return await super()._handle(request)
        async with self._gate:  # no other write between stamping and storing
            async with self._lock:
                if request.action == kmock.action.CREATE:
                    self._stamp_create(request)
                elif request.action == kmock.action.UPDATE:
                    self._stamp_update(request)
                else:
                    self._stamp_delete(request)
            return await super()._handle(request)

    def _stamp_create(self, request) -> None:
        data, now = request.data, datetime.datetime.now(datetime.timezone.utc)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            generation=1,
            creationTimestamp=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        if "status" in self._info(request.resource).subresources:
            data.pop("status", None)

    def _stamp_update(self, request) -> None:
        key = (request.resource, request.namespace, request.name)
        if (
            key not in self.objects
            or self.objects[key].deleted
            or not isinstance(request.data, dict)
        ):
            return  # kmock answers 404 (or applies a JSON patch as it is)
        current, patch = self.objects[key].raw, dict(request.data)
        if request.subresource == "status":
            patch = {"status": patch.get("status")}
        elif request.subresource == "scale":
            replicas = (patch.get("spec") or {}).get("replicas")
            patch = {"spec": {"replicas": replicas}} if replicas is not None else {}
        elif request.subresource is None and "status" in self._info(request.resource).subresources:
            patch.pop("status", None)
        meta = {
            k: v
            for k, v in (patch.get("metadata") or {}).items()
            if k not in ("uid", "creationTimestamp", "generation", "resourceVersion")
        }
        generation = current.get("metadata", {}).get("generation", 1)
        if "spec" in patch and dicts.patch_dict(current, {"spec": patch["spec"]}).get(
            "spec"
        ) != current.get("spec"):
            generation += 1
        patch["metadata"] = {
            **meta,
            "resourceVersion": self._next_version(),
            "generation": generation,
        }
        object.__setattr__(request, "data", patch)

    def _stamp_delete(self, request) -> None:
        # a real API server gives the DELETED event a new resourceVersion; replays rely on it
        key = (request.resource, request.namespace, request.name)
        if request.name and key in self.objects and not self.objects[key].deleted:
            self.objects[key].patch({"metadata": {"resourceVersion": self._next_version()}})

    async def _serve_watch(self, request):
        """What changed since the request's resourceVersion (everything without one), then live
        events; a fault may end the stream early, as API servers do on timeouts and restarts."""
        yield b""  # send the headers now: a quiet stream is still a stream
        fault, faults, bus = (
            self._watch_faults.get(request.id) or Fault(),
            self.faults,
            self._buses[request.resource],
        )
        async with (
            self._lock
        ):  # no write between the replay and the mark: nothing lost, nothing twice
            mark = await bus.mark()
            replay = parts.replay(self.objects, request)
        try:
            for event in replay:
                yield event
            async for event in parts.until(bus.stream(since=mark), fault.lifetime):
                ns, name = (
                    event["object"]["metadata"].get("namespace"),
                    event["object"]["metadata"]["name"],
                )
                if parts.in_scope(request, ns, name):
                    yield event
            if fault.lifetime is not None and faults is not None:  # dropped, not left by the client
                faults.injected["watch_gone" if fault.gone else "watch_closed"] += 1
                if fault.gone:
                    yield parts.GONE
        finally:
            await bus.unmark(mark)

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
        return parts.scale(obj, self._scale_paths.get(request.resource, parts.DEFAULT_SCALE_PATHS))

    def _wants_table(self, request) -> bool:
        return "as=Table" in request.headers.get("Accept", "") and request.resource in self._columns

    def _table(self, request, objs: list[dict]) -> dict:
        return parts.table(self._columns[request.resource], objs, str(self._version))

    async def _serve_fetch(self, request):
        obj = await super()._serve_fetch(request)
        if request.subresource == "scale":
            return self._scale(request, obj)
        return (
            self._table(request, [obj])
            if self._wants_table(request) and not request.subresource
            else obj
        )

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
        return {
            "apiVersion": api_version,
            "kind": kind,
            **result,
            "metadata": {"resourceVersion": str(self._version)},
        }
