"""Stateless pieces of the emulated API server (emulator.KubeEmulator):
the request log, watch replays and stream ends, the Scale subresource and `kubectl get` Tables.
"""

import asyncio
import datetime

GONE = {
    "type": "ERROR",
    "object": {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "the watch's resourceVersion is too old",
    },
}

# the scale paths of a kind without a CRD declaring them (Deployments and the like)
DEFAULT_SCALE_PATHS = (".spec.replicas", ".status.replicas", ".status.selector")


class RequestLog(list):
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


def in_scope(request, namespace: str | None, name: str) -> bool:
    """Whether a watch or list request covers the object at namespace/name."""
    return request.namespace in (None, namespace) and request.name in (None, name)


def replay(objects, request) -> list[dict]:
    """The events a watch starts with: every live object as ADDED without a resourceVersion
    (or with "0"); from one, the latest state of each object changed since, deletions included."""
    since = request.params.get("resourceVersion", "")
    since = int(since) if since.isdigit() and since != "0" else None
    events = []
    for (resource, ns, name), obj in objects.items():
        if resource != request.resource or not in_scope(request, ns, name):
            continue
        version = int(obj.last.raw.get("metadata", {}).get("resourceVersion") or 0)
        if not obj.deleted and since is None:
            events.append({"type": "ADDED", "object": obj.raw})
        elif since is not None and version > since:
            events.append(
                {"type": "DELETED" if obj.deleted else "MODIFIED", "object": obj.last.raw}
            )
    return events


async def until(stream, seconds: float | None):
    """The stream's items until it ends or, when seconds is given, until that much time passed."""
    if seconds is None:
        async for item in stream:
            yield item
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while (left := end - loop.time()) > 0:
            try:
                yield await asyncio.wait_for(anext(stream), left)
            except (asyncio.TimeoutError, StopAsyncIteration):
                return
    finally:
        await stream.aclose()


def json_path(obj, path: str | None):
    """The value at a simple JSON path like .spec.replicas, or None."""
    if not path:
        return None
    for key in path.strip(".").split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def scale(obj: dict, paths: tuple[str, str, str | None] = DEFAULT_SCALE_PATHS) -> dict:
    """The autoscaling/v1 Scale view of an object, given its (spec, status, selector) paths."""
    spec_path, status_path, selector_path = paths
    meta = {
        k: obj["metadata"].get(k)
        for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    }
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": meta,
        "spec": {"replicas": json_path(obj, spec_path) or 0},
        "status": {
            "replicas": json_path(obj, status_path) or 0,
            "selector": json_path(obj, selector_path) or "",
        },
    }


def table(printer_columns: list[dict], objs: list[dict], resource_version: str) -> dict:
    """What `kubectl get` shows: a CRD's printer columns, as the API server renders them."""
    columns = [c for c in printer_columns if c["jsonPath"] != ".metadata.creationTimestamp"]
    return {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "Table",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": "Name", "type": "string", "format": "name"}]
        + [{"name": c["name"], "type": c["type"], "format": ""} for c in columns]
        + [{"name": "Age", "type": "string", "format": ""}],
        "rows": [
            {
                "cells": [o["metadata"]["name"]]
                + [json_path(o, c["jsonPath"]) for c in columns]
                + [age(o["metadata"].get("creationTimestamp"))],
                "object": {
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": o["metadata"],
                },
            }
            for o in objs
        ],
    }
