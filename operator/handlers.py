"""The kopf wiring: every trigger runs the same level-based reconcile.

- create/update/resume of an LLMDeployment: reconcile now; a bad spec is a PermanentError
  (only a spec change, which is an update, can fix it), a missing Secret a slow TemporaryError;
- an event on a Deployment, LeaderWorkerSet or Service we control: reconcile its owner (restores
  a deleted or edited child at once, and follows the pods' readiness into the status);
- every resync_interval: reconcile everything (repairs the HPA, PDB and PVC too, refreshes).

No finalizers: the children carry owner references, so deleting an LLMDeployment is instant
and the garbage collector removes the rest, even while the operator is down.
Run with `pagedserve operator`, or `kopf run -m pagedserve.operator.handlers`.
"""

import asyncio
import contextlib
import copy
import logging

import kopf
from kubernetes.client.exceptions import ApiException

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.kube import Kube
from pagedserve.operator.labels import GROUP, KIND, MANAGED_BY, PLURAL, VERSION
from pagedserve.operator.reconcile import KeyedLocks, reconcile

LLMD = (GROUP, VERSION, PLURAL)
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}


def _plain(body) -> dict:
    return copy.deepcopy(dict(body))


def _backoff(retry: int) -> float:
    return float(min(60, 2**retry))


@kopf.index(*LLMD)
def llmdeployment_keys(namespace: str, name: str, **_) -> dict:
    """(namespace, name) of every LLMDeployment kopf sees: what the resync walks over."""
    return {(namespace, name): None}


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else $KUBECONFIG as it is now (as Kube.from_environment)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    llmdeployment_keys: kopf.Index,
    logger: logging.Logger,
    **_,
) -> None:
    # kopf's bookkeeping in our own annotations, none in status (the CRD's schema prunes it)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = (
        logging.WARNING
    )  # our own Events say what happened; skip kopf's chatter
    settings.scanning.disabled = (
        True  # the resources are known: no CRD or namespace scanning (nor its RBAC)
    )
    settings.watching.server_timeout = 600  # re-list now and then: no watch is trusted forever
    memo.config = memo.get("config") or OperatorConfig.from_env()
    memo.kube = Kube.from_environment()
    memo.locks = KeyedLocks()
    memo.stopping = asyncio.Event()
    memo.resync = asyncio.create_task(_resync_forever(memo, llmdeployment_keys, logger))
    logger.info(
        "pagedserve operator: images %s | %s | %s, resync every %ss",
        memo.config.image_amd,
        memo.config.image_nvidia,
        memo.config.image_cpu,
        memo.config.resync_interval,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    task = memo.get("resync")
    if task is not None:
        memo.stopping.set()
        try:  # let a pass in flight finish: its thread cannot be cancelled anyway
            await asyncio.wait_for(task, timeout=60)
        except asyncio.TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if memo.get("kube") is not None:
        memo.kube.close()


@kopf.on.resume(*LLMD)
@kopf.on.create(*LLMD)
@kopf.on.update(*LLMD)
def reconcile_llmdeployment(body: kopf.Body, memo: kopf.Memo, retry: int, **_) -> None:
    owner = _plain(body)
    meta = owner["metadata"]
    with memo.locks(meta["namespace"], meta["name"]):
        try:
            outcome = reconcile(memo.kube, memo.config, owner)
        except ApiException as exc:
            raise kopf.TemporaryError(
                f"API server answered {exc.status}; retrying", delay=_backoff(retry)
            ) from exc
    if outcome.problem:
        reason, message = outcome.problem
        if outcome.permanent:
            raise kopf.PermanentError(f"{reason}: {message}")
        raise kopf.TemporaryError(f"{reason}: {message}", delay=memo.config.retry_delay)


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
# a multi-node spec's pods; kopf serves this watch only while the LWS CRD is installed
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=OURS)
@kopf.on.event("v1", "services", labels=OURS)
def child_changed(
    body: kopf.Body, event: dict, memo: kopf.Memo, logger: logging.Logger, **_
) -> None:
    if event.get("type") is None:  # the initial listing: resume handlers cover those
        return
    owner = next(
        (
            ref
            for ref in body.metadata.get("ownerReferences") or []
            if ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion", "").startswith(f"{GROUP}/")
        ),
        None,
    )
    if owner is not None:
        reconcile_by_name(memo, body.metadata["namespace"], owner["name"], logger)


def reconcile_by_name(memo: kopf.Memo, namespace: str, name: str, logger: logging.Logger) -> None:
    """Fetch the LLMDeployment and reconcile it; errors are logged (the next trigger retries)."""
    with memo.locks(namespace, name):
        try:
            owner = memo.kube.get("LLMDeployment", namespace, name)
            if owner is None or owner["metadata"].get("deletionTimestamp"):
                return  # gone or going: the garbage collector takes the children
            reconcile(memo.kube, memo.config, owner)
        except Exception as exc:  # a resync must survive anything one object does
            why = (
                f"API server answered {exc.status} {exc.reason}"
                if isinstance(exc, ApiException)
                else repr(exc)
            )
            logger.warning(
                "reconciling %s/%s failed: %s; the next resync retries", namespace, name, why
            )


async def _resync_forever(memo: kopf.Memo, keys: kopf.Index, logger: logging.Logger) -> None:
    while not memo.stopping.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(memo.stopping.wait(), timeout=memo.config.resync_interval)
        for namespace, name in list(keys):
            if memo.stopping.is_set():
                return
            await asyncio.to_thread(reconcile_by_name, memo, namespace, name, logger)
