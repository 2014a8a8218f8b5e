"""Create what is missing, patch what drifted, leave alone what matches: the level-based apply.

"Matches" means the desired object is a subset of the live one: the API server adds defaults
(imagePullPolicy, clusterIP, probe timeouts, ...) that are no drift. Comparing that way (and
quantities by value) is what keeps a second pass from patching anything.
"""

from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from pagedserve.operator.kube import Kube
from pagedserve.operator.quantity import same_quantity

# quantities the API server may rewrite ("1024Mi" -> "1Gi"): values of these keys or inside
# these maps
QUANTITY_KEYS = ("sizeLimit", "storage")
QUANTITY_PARENTS = ("limits", "requests", "capacity")


class NotOurs(Exception):
    """A child's name is taken by an object that this LLMDeployment does not control."""


class OwnerGone(Exception):
    """The owner was deleted while a pass was running: create nothing for it."""


class KindNotServed(Exception):
    """The cluster does not serve a child's kind: the CRD of the project it belongs to is
    missing."""


# who installs the CRDs of the kinds a cluster may lack
PROVIDERS = {
    "InferencePool": "the Gateway API Inference Extension CRDs",
    "ScaledObject": "KEDA",
    "LeaderWorkerSet": "LeaderWorkerSet (kubernetes-sigs/lws)",
}


def _create(kube: Kube, desired: dict) -> dict:
    """Create the child; a 404 means its kind is not served (the owner's namespace exists)."""
    kind, meta = desired["kind"], desired["metadata"]
    try:
        return kube.create(kind, meta["namespace"], strip_none(desired))
    except ApiException as exc:
        if exc.status != 404 or kind not in PROVIDERS:
            raise
        raise KindNotServed(
            f"{kind} ({desired['apiVersion']}) is not served by this cluster: install "
            f"{PROVIDERS[kind]}, or remove the spec field that asks for it"
        ) from None


def strip_none(obj: Any) -> Any:
    """The object without None values (what is sent on create)."""
    if isinstance(obj, dict):
        return {k: strip_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_none(v) for v in obj if v is not None]
    return obj


def patch_body(obj: Any) -> Any:
    """A JSON merge patch: None stays (it deletes the key), except inside lists, which replace
    whole."""
    if isinstance(obj, dict):
        return {k: patch_body(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return strip_none(obj)
    return obj


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def is_subset(desired: Any, live: Any, key: str = "", container: str = "") -> bool:
    """True when everything desired is in live; None (or empty) desired means absent or empty."""
    if _empty(desired):
        return _empty(live) or (desired == {} and isinstance(live, dict))
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(is_subset(v, live.get(k), k, key) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, live_item, key, container) for d, live_item in zip(desired, live))
    if desired == live:
        return True
    quantity = key in QUANTITY_KEYS or container in QUANTITY_PARENTS
    return quantity and same_quantity(desired, live)


def controlled_by(obj: dict, owner_uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


def inherited(obj: dict, owner: dict) -> bool:
    """True when obj's controller is an earlier object of the owner's kind and name: deleted, as
    names are unique and its uid is not the owner's. Its garbage is ours to adopt (or remove)."""
    meta = owner["metadata"]
    group = owner.get("apiVersion", "").split("/")[0]
    return any(
        ref.get("controller")
        and ref.get("kind") == owner.get("kind")
        and ref.get("name") == meta["name"]
        and ref.get("apiVersion", "").split("/")[0] == group
        and ref.get("uid") != meta["uid"]
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


@dataclass(slots=True)
class Applied:
    kind: str
    action: str  # created | patched | adopted | unchanged | deleted | absent
    live: dict | None


def ensure(kube: Kube, desired: dict, owner: dict, owner_exists=lambda: True) -> Applied:
    """Bring one child of owner to its desired state; NotOurs if the name belongs to someone else.

    owner_exists() is asked right before a create: a child made for a deleted owner would be an
    orphan until the garbage collector found it. A child left by a deleted owner of the same
    name (deleted and re-created faster than the garbage collector) is adopted: the patch
    rewrites its owner reference, and its pods keep serving.
    """
    kind, meta = desired["kind"], desired["metadata"]
    live = kube.get(kind, meta["namespace"], meta["name"])
    if live is None:
        if not owner_exists():
            raise OwnerGone(f"{kind} {meta['name']}: the LLMDeployment is gone")
        return Applied(kind, "created", _create(kube, desired))
    if inherited(live, owner):
        return Applied(
            kind, "adopted", kube.patch(kind, meta["namespace"], meta["name"], patch_body(desired))
        )
    if not controlled_by(live, owner["metadata"]["uid"]):
        raise NotOurs(
            f"{kind} {meta['name']} exists and is not controlled by this LLMDeployment; "
            "rename one of them or delete that object"
        )
    if is_subset(desired, live):
        return Applied(kind, "unchanged", live)
    return Applied(
        kind, "patched", kube.patch(kind, meta["namespace"], meta["name"], patch_body(desired))
    )


def remove(kube: Kube, kind: str, name: str, owner: dict) -> Applied:
    """Delete a child the spec no longer asks for, but only one owner (or its namesake) controls."""
    namespace = owner["metadata"]["namespace"]
    live = kube.get(kind, namespace, name)
    if live is None or not (
        controlled_by(live, owner["metadata"]["uid"]) or inherited(live, owner)
    ):
        return Applied(kind, "absent", None)
    kube.delete(kind, namespace, name)
    return Applied(kind, "deleted", None)
