"""pagedserve.operator: a kopf operator that turns LLMDeployment resources into model servers.

Modules, in the order data flows through them:

- spec: the LLMDeployment spec parsed into dataclasses, with clear errors for bad values
- manifests, pod: pure functions building the desired children (Deployment, Service, HPA, PDB, PVC)
- apply, kube: create what is missing, patch what drifted, over the official kubernetes client
- status: phase and conditions from the children's state
- reconcile: one level-based pass over one LLMDeployment
- handlers: the kopf wiring; cli: `pagedserve operator`; rbac: every API call the operator makes
- testing, emulator, emulator_parts, faults: test support (needs kmock): an emulated API server
  that can misbehave on purpose, and the real operator run against it

Nothing here imports torch: the operator only writes manifests that run `pagedserve serve`.
"""
