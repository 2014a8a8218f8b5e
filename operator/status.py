"""The LLMDeployment's status from what its Deployment reports: pure functions.

A multi-node LLMDeployment's LeaderWorkerSet reports the same fields (replicas, readyReplicas,
updatedReplicas, observedGeneration) counting groups, so the same rollout() reads it and
readyReplicas is the number of ready groups.

phase: Pending (no pods yet) -> Progressing (pods starting: download, load) -> Ready (all
replicas ready); Degraded (a finished rollout lost replicas), Failed (a bad spec, a missing
Secret, an apply error, or a rollout past its deadline), Stopped (scaled to zero).
Two conditions: Reconciled (the children match the spec) and Ready (every replica serves).
"""

import datetime

from pagedserve.operator.labels import selector_string
from pagedserve.operator.manifests import endpoint

WARNING_PHASES = ("Failed", "Degraded")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _deployment_condition(deployment: dict, kind: str) -> dict:
    for cond in deployment.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def rollout(deployment: dict | None) -> tuple[str, str, str]:
    """(phase, reason, message) of the Deployment's rollout."""
    if deployment is None:
        return "Pending", "DeploymentMissing", "the Deployment does not exist yet"
    want = deployment.get("spec", {}).get("replicas", 1)
    st = deployment.get("status") or {}
    ready, updated, total = (
        st.get("readyReplicas") or 0,
        st.get("updatedReplicas") or 0,
        st.get("replicas") or 0,
    )
    progressing = _deployment_condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return (
            "Failed",
            "ProgressDeadlineExceeded",
            progressing.get("message") or "the rollout is stuck",
        )
    if want == 0:
        return "Stopped", "ScaledToZero", "replicas is 0"
    counts = f"{ready}/{want} replicas ready"
    observed = st.get("observedGeneration")
    if (
        observed is None
        or observed < deployment.get("metadata", {}).get("generation", 0)
        or total == 0
    ):
        return ("Pending" if ready == 0 else "Progressing"), "RolloutPending", counts
    if ready >= want and updated >= want and total == want:
        return "Ready", "AllReplicasReady", counts
    if updated < want or total > want:
        return "Progressing", "RolloutInProgress", counts
    if progressing.get("reason") == "NewReplicaSetAvailable":
        return "Degraded", "ReplicasUnavailable", counts
    return "Progressing", "ReplicasStarting", counts + " (starting: model download and load)"


def _condition(
    kind: str, ok: bool, reason: str, message: str, generation: int | None, old: list
) -> dict:
    status = "True" if ok else "False"
    previous = next((c for c in old if c.get("type") == kind), {})
    since = previous.get("lastTransitionTime") if previous.get("status") == status else None
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or _now(),
        "observedGeneration": generation,
    }


def build_status(
    owner: dict,
    deployment: dict | None,
    port: int,
    problem: tuple[str, str] | None = None,
    selector_extra: dict | None = None,
) -> dict:
    """The complete status; problem = (reason, message) when the children could not be applied;
    deployment is the pods' owner (a Deployment or LeaderWorkerSet); selector_extra narrows
    status.selector to the pods that serve."""
    meta = owner["metadata"]
    generation = meta.get("generation")
    old = (owner.get("status") or {}).get("conditions") or []
    st = (deployment or {}).get("status") or {}
    spec = owner.get("spec") if isinstance(owner.get("spec"), dict) else {}
    asked = spec.get("replicas", 1)
    want = (
        (deployment or {}).get("spec", {}).get("replicas", asked if isinstance(asked, int) else 0)
    )
    ready = st.get("readyReplicas") or 0
    if problem:
        phase, (reason, message) = "Failed", problem
        reconciled = _condition("Reconciled", False, reason, message, generation, old)
    else:
        phase, reason, message = rollout(deployment)
        reconciled = _condition(
            "Reconciled", True, "Applied", "the children match the spec", generation, old
        )
    return {
        "phase": phase,
        "replicas": st.get("replicas") or 0,
        "readyReplicas": ready,
        "ready": f"{ready}/{want}",
        "selector": selector_string(meta["name"], selector_extra),
        "endpoint": endpoint(meta["name"], meta["namespace"], port),
        "observedGeneration": generation,
        "conditions": [
            reconciled,
            _condition("Ready", phase == "Ready", reason, message, generation, old),
        ],
    }


def event_for(old_status: dict | None, new_status: dict) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event a status change deserves, or None.

    Only changes of phase or reason are news (and of the message while Failed): replica counts
    ticking up are not, and neither is the same bad spec seen again on a slow retry.
    """

    def ready(status: dict | None) -> dict:
        return next((c for c in (status or {}).get("conditions") or [] if c["type"] == "Ready"), {})

    before, after = ready(old_status), ready(new_status)
    phase, old_phase = new_status["phase"], (old_status or {}).get("phase")
    same = phase == old_phase and before.get("reason") == after["reason"]
    if same and (phase != "Failed" or before.get("message") == after["message"]):
        return None
    kind = "Warning" if phase in WARNING_PHASES else "Normal"
    return kind, after["reason"], f"{phase}: {after['message']}"


def same_status(old: dict | None, new: dict) -> bool:
    """True when writing new would change none of the fields the operator owns."""
    old = old or {}
    return all(old.get(key) == value for key, value in new.items())
