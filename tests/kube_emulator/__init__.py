"""The real operator against an emulated Kubernetes API (kmock with its gaps filled): test
support for tests/operator and tests/charts, kept out of the product.

- emulator: KubeEmulator, the API server (kmock 0.8's KubernetesEmulator, gaps filled)
- parts: its stateless pieces (request log, watch replays, Scale, `kubectl get` Tables)
- faults: seeded misbehaviour (409s, 500s, lost answers, delays, dropped watches)
- cluster: EmulatedCluster (the emulator on localhost, from a thread), running_operator and
  the helpers tests use to drive and check it
"""

from .cluster import (
    ApiCall,
    EmulatedCluster,
    condition,
    deployment_ready,
    diverged,
    llmdeployment,
    running_operator,
    wait_for,
)
from .faults import OPERATOR_AGENTS, Fault, Faults

__all__ = [
    "ApiCall",
    "EmulatedCluster",
    "Fault",
    "Faults",
    "OPERATOR_AGENTS",
    "condition",
    "deployment_ready",
    "diverged",
    "llmdeployment",
    "running_operator",
    "wait_for",
]
