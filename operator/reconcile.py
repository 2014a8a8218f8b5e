"""One level-based pass over one LLMDeployment: spec -> children -> status (and an Event).

Every entry point (create/update/resume handlers, child events, the periodic resync) runs this
same function; it reads the world, so running it again changes nothing.
"""

import json
import logging
import threading
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException

from pagedserve.operator import manifests
from pagedserve.operator.apply import Applied, KindNotServed, NotOurs, OwnerGone, ensure, remove
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.kube import Kube
from pagedserve.operator.lws import WORKER_INDEX_LABEL
from pagedserve.operator.spec import LLMDeploymentSpec, SpecError, check_name, parse_spec
from pagedserve.operator.status import build_status, event_for, same_status

log = logging.getLogger(__name__)
# API answers worth a quick retry: conflicts, throttling, server trouble
TRANSIENT = (409, 429, 500, 502, 503, 504)
LAYOUT_FIELDS = ("tensorParallelSize", "pipelineParallelSize", "gpusPerNode")


def leader_selector_extra() -> dict:
    return {WORKER_INDEX_LABEL: "0"}


@dataclass(slots=True)
class Outcome:
    """What one pass did; problem is (reason, message) when the children could not be applied."""

    status: dict
    problem: tuple[str, str] | None = None
    permanent: bool = False  # only a spec change can fix it
    actions: list[Applied] = field(default_factory=list)


class KeyedLocks:
    """One lock per LLMDeployment: handlers, child events and the resync never interleave on it."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def __call__(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())


def check_references(kube: Kube, namespace: str, spec: LLMDeploymentSpec) -> None:
    """The Secrets and the existing claim the pods need must exist, or the pods never start."""
    for field_name, ref in (
        ("hfTokenSecret", spec.hf_token_secret),
        ("apiKeySecret", spec.api_key_secret),
    ):
        if ref is None:
            continue
        secret = kube.get("Secret", namespace, ref.name)
        if secret is None:
            raise SpecError(
                f"spec.{field_name}: Secret {ref.name!r} not found in namespace {namespace!r}",
                "SecretNotFound",
            )
        if ref.key not in (secret.get("data") or {}) and ref.key not in (
            secret.get("stringData") or {}
        ):
            raise SpecError(
                f"spec.{field_name}: Secret {ref.name!r} has no key {ref.key!r}",
                "SecretKeyNotFound",
            )
    claim = spec.model_cache.existing_claim if spec.model_cache else None
    if claim and kube.get("PersistentVolumeClaim", namespace, claim) is None:
        raise SpecError(
            f"spec.modelCache.existingClaim: PVC {claim!r} not found in namespace {namespace!r}",
            "ClaimNotFound",
        )


def apply_children(
    kube: Kube, owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig
) -> list[Applied]:
    uid, meta = owner["metadata"]["uid"], owner["metadata"]

    def owner_exists() -> bool:
        live = kube.get("LLMDeployment", meta["namespace"], meta["name"])
        return (
            live is not None
            and live["metadata"].get("uid") == uid
            and not live["metadata"].get("deletionTimestamp")
        )

    actions = []
    for kind, desired in manifests.desired_children(owner, spec, config).items():
        if desired is not None:
            actions.append(ensure(kube, desired, owner, owner_exists))
        else:
            actions.append(remove(kube, kind, manifests.child_name(kind, meta["name"]), owner))
    return actions


def _apply(
    kube: Kube, owner: dict, config: OperatorConfig
) -> tuple[LLMDeploymentSpec, list[Applied]]:
    """(the spec, what was done); SpecError or NotOurs when it cannot be done."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    check_name(name)
    spec = parse_spec(owner.get("spec"))
    check_references(kube, namespace, spec)
    return spec, apply_children(kube, owner, spec, config)


def _workload(kube: Kube, owner: dict, actions: list[Applied], multi_node: bool) -> dict | None:
    """The live owner of the pods (Deployment or LeaderWorkerSet), for the status."""
    kind = "LeaderWorkerSet" if multi_node else "Deployment"
    live = next((a.live for a in actions if a.kind == kind), None)
    if live is None and not actions:  # not applied: still report the pods already serving
        meta = owner["metadata"]
        live = kube.get(kind, meta["namespace"], meta["name"])
    return live


def reconcile(kube: Kube, config: OperatorConfig, owner: dict) -> Outcome:
    """Apply the children and write the status; transient API errors propagate (retry soon)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    port, problem, permanent, actions, spec = _port_hint(owner), None, False, [], None
    try:
        spec, actions = _apply(kube, owner, config)
        port = spec.service_port
    except OwnerGone:
        log.info("%s/%s was deleted during a pass; nothing to do", namespace, name)
        return Outcome({}, None)
    except SpecError as exc:
        problem, permanent = (exc.reason, str(exc)), exc.reason == "InvalidSpec"
    except NotOurs as exc:
        problem = ("NameConflict", str(exc))
    except KindNotServed as exc:  # installing the CRD fixes it: retried, not permanent
        problem = ("CRDNotInstalled", str(exc))
    except ApiException as exc:
        if exc.status in TRANSIENT:
            raise
        problem = (
            "ApiError",
            f"the API server refused a child ({exc.status} {exc.reason}): {_api_message(exc)}",
        )
    multi_node = spec.multi_node if spec else _multi_node_hint(owner)
    workload = _workload(kube, owner, [] if problem else actions, multi_node)
    status = build_status(
        owner, workload, port, problem, leader_selector_extra() if multi_node else None
    )
    _publish(kube, owner, status)
    changed = [f"{a.kind} {a.action}" for a in actions if a.action not in ("unchanged", "absent")]
    if changed:
        log.info("%s/%s: %s", namespace, name, ", ".join(changed))
    return Outcome(status, problem, permanent, actions)


def _port_hint(owner: dict) -> int:
    """The Service port for status.endpoint even when the spec does not parse."""
    spec = owner.get("spec")
    service = spec.get("service") if isinstance(spec, dict) else None
    port = service.get("port") if isinstance(service, dict) else None
    return port if isinstance(port, int) and not isinstance(port, bool) else 8000


def _multi_node_hint(owner: dict) -> bool:
    """Whether the last good spec made a LeaderWorkerSet, for a spec that does not parse: the
    spec's layout fields alone, if they still parse."""
    try:
        return parse_spec(
            {
                "model": "x",
                **{k: v for k, v in (owner.get("spec") or {}).items() if k in LAYOUT_FIELDS},
            }
        ).multi_node
    except (SpecError, AttributeError, TypeError):
        return False


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.body)
    except ValueError:
        return str(exc.body)


def _publish(kube: Kube, owner: dict, status: dict) -> None:
    """Write the status if it changed, and post an Event if the change is news."""
    meta = owner["metadata"]
    old = owner.get("status")
    if same_status(old, status):
        return
    try:
        kube.patch(
            "LLMDeployment",
            meta["namespace"],
            meta["name"],
            {"status": status},
            subresource="status",
        )
    except ApiException as exc:
        if exc.status == 404:  # deleted meanwhile: nothing to report on
            return
        raise
    news = event_for(old, status)
    if news is None:
        return
    try:
        kube.create("Event", meta["namespace"], manifests.event(owner, *news))
    except ApiException as exc:  # an Event is a courtesy; the status already says it all
        log.warning(
            "could not post an Event for %s/%s: %s", meta["namespace"], meta["name"], exc.status
        )
