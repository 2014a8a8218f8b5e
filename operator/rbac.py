"""Every Kubernetes API call the operator makes, as RBAC rules: the list the chart's roles copy.

Ours go through kube.Kube (get/create/patch/delete of the children, Secrets and claims checked
by name, status and Events); kopf's are the watches, its annotation patches on LLMDeployments,
its Events and, with --peering, the peering objects. tests/operator checks a recorded run of
the real operator against this list.
"""

from typing import NamedTuple


class Rule(NamedTuple):
    group: str  # "" is the core API group
    resource: str  # plural, or plural/subresource
    verbs: tuple[str, ...]


# in every namespace the operator serves (a ClusterRole when it serves all of them)
NAMESPACED: tuple[Rule, ...] = (
    # kopf: list, watch, patch (its annotations); the resync and child events: get
    Rule("pagedserve.io", "llmdeployments", ("get", "list", "watch", "patch")),
    Rule("pagedserve.io", "llmdeployments/status", ("patch",)),
    # watched for readiness and to restore them at once
    Rule("apps", "deployments", ("get", "list", "watch", "create", "patch")),
    Rule("", "services", ("get", "list", "watch", "create", "patch")),
    # optional children: deleted when the spec stops asking for them
    Rule("autoscaling", "horizontalpodautoscalers", ("get", "create", "patch", "delete")),
    Rule("policy", "poddisruptionbudgets", ("get", "create", "patch", "delete")),
    Rule("", "persistentvolumeclaims", ("get", "create", "patch", "delete")),
    Rule("keda.sh", "scaledobjects", ("get", "create", "patch", "delete")),
    Rule("inference.networking.k8s.io", "inferencepools", ("get", "create", "patch", "delete")),
    # a multi-node spec's pods, watched like the Deployment; deleted when the spec fits one node
    Rule(
        "leaderworkerset.x-k8s.io",
        "leaderworkersets",
        ("get", "list", "watch", "create", "patch", "delete"),
    ),
    # only checked to exist (by name) before pods that need them are made
    Rule("", "secrets", ("get",)),
    Rule("", "events", ("create",)),
    # kopf peering with --peering, when serving some namespaces
    Rule("kopf.dev", "kopfpeerings", ("list", "watch", "patch")),
)
# cluster-scoped: kopf peering with --peering, when serving all namespaces
CLUSTER: tuple[Rule, ...] = (Rule("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch")),)


def policy_rules(rules: tuple[Rule, ...]) -> list[dict]:
    """The rules as a Role's or ClusterRole's `rules:` list."""
    return [
        {"apiGroups": [r.group], "resources": [r.resource], "verbs": list(r.verbs)} for r in rules
    ]


def allows(
    group: str, resource: str, verb: str, rules: tuple[Rule, ...] = NAMESPACED + CLUSTER
) -> bool:
    return any(r.group == group and r.resource == resource and verb in r.verbs for r in rules)
