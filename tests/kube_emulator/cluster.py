"""Test support: the real operator against an emulated Kubernetes API, no cluster needed.

Like kopf.testing, this is for tests only and needs the test extra (kmock); it lives under
tests/ so that neither the wheel nor the operator image carries it. EmulatedCluster serves
emulator.KubeEmulator (kmock with its gaps filled) on localhost from a thread and records every
request; running_operator runs the operator in it with kopf's KopfRunner. The emulator runs no
controllers (tests patch a Deployment's status themselves, see deployment_ready) and collects no
garbage (tests assert owner references). inject(faults.Faults(...)) makes it misbehave towards
the operator: random 409s, 500s, lost answers, delays, dropped watches; diverged() says what
still differs from a spec.

    with EmulatedCluster(crds=[CRD_PATH]) as cluster, running_operator(cluster):
        cluster.kube.create("LLMDeployment", "default", llmdeployment("m"))
        wait_for(lambda: cluster.kube.get("Deployment", "default", "m"))
        assert all(rbac.allows(*call) for call in cluster.api_calls())
"""

import asyncio
import contextlib
import copy
import pathlib
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import kmock
import yaml

from pagedserve.operator.apply import controlled_by, is_subset
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.kube import KINDS, Kube
from pagedserve.operator.manifests import child_name, desired_children
from pagedserve.operator.spec import parse_spec

from .emulator import KubeEmulator
from .faults import OPERATOR_AGENTS, Faults

VERBS = {
    "LIST": "list",
    "WATCH": "watch",
    "FETCH": "get",
    "CREATE": "create",
    "UPDATE": "patch",
    "DELETE": "delete",
}


class ApiCall(NamedTuple):
    """One kind of request, in RBAC terms: apiGroup, resource[/subresource], verb."""

    group: str
    resource: str
    verb: str


class EmulatedCluster:
    """A KubeEmulator served on localhost from its own thread and event loop.

    Tests stay synchronous: subprocesses (kubectl), blocking clients and a KopfRunner can all
    talk to it while the test waits. `kubeconfig` is a file pointing at it; `kube` is a client
    for the test itself (its requests are not the operator's, see api_calls).
    """

    def __init__(self, crds: list[str | pathlib.Path] = ()):
        self._crds = [yaml.safe_load(pathlib.Path(p).read_text()) for p in crds]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="kube-emulator-")
        self.kubeconfig = str(pathlib.Path(self._tmp.name) / "kubeconfig")
        self.url = ""

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with KubeEmulator() as emulator, kmock.Server(emulator) as server:
            with warnings.catch_warnings():  # kmock 0.8 reads its data with a deprecated call
                warnings.simplefilter("ignore", DeprecationWarning)
                emulator.resources.load_bundled()
            for crd in self._crds:
                emulator.declare_crd(crd)
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "EmulatedCluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator"}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}
            ],
        }
        pathlib.Path(self.kubeconfig).write_text(yaml.safe_dump(config))
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        self.kube = Kube(client.ApiClient(cfg))
        self.kube.api.user_agent = "emulated-cluster-test/1"
        return self

    def __exit__(self, *exc) -> None:
        self.kube.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._tmp.cleanup()

    def _sync(self, fn):
        """Run fn() on the emulator's loop under its lock: a consistent snapshot."""

        async def locked():
            async with self.emulator._lock:
                return fn()

        return asyncio.run_coroutine_threadsafe(locked(), self._loop).result(30)

    def objects(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Deep copies of the live objects of a kind (see kube.KINDS), optionally in one
        namespace."""
        group, version, plural = KINDS[kind]

        def pick():
            return [
                copy.deepcopy(obj.raw)
                for (res, ns, _), obj in self.emulator.objects.items()
                if (res.group, res.version, res.plural) == (group, version, plural)
                and not obj.deleted
                and namespace in (None, ns)
            ]

        return self._sync(pick)

    def fail_next(self, method: str, path_suffix: str, status: int, times: int = 1) -> None:
        """Make the next matching requests fail with that HTTP status (see
        KubeEmulator.fail_next)."""
        self._sync(lambda: self.emulator.fail_next(method, path_suffix, status, times))

    def inject(self, faults: Faults | None) -> None:
        """Disturb the operator's requests from now on with these random faults (None: stop).
        faults.injected counts what was done."""
        self._sync(lambda: setattr(self.emulator, "faults", faults))

    def requests(self) -> list:
        """Every request served so far (kmock Request objects)."""
        return self._sync(lambda: self.emulator._requests.everything())

    def api_calls(self, agents: tuple[str, ...] = OPERATOR_AGENTS, since: int = 0) -> set[ApiCall]:
        """(apiGroup, resource, verb) of every resource request (from the since-th on) whose
        User-Agent starts with one of agents: compare it with a ClusterRole's rules. Discovery
        (/api, /apis) is left out: every authenticated user may read it."""
        calls = set()
        for req in self.requests()[since:]:
            agent = req.headers.get("User-Agent", "")
            if req.resource is None or req.resource.plural is None or not agent.startswith(agents):
                continue
            verb = (
                "update"
                if req.method == kmock.method.PUT
                else VERBS.get(getattr(req.action, "name", ""))
            )
            resource = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
            calls.add(ApiCall(req.resource.group or "", resource, verb or req.method.value.lower()))
        return calls


@contextlib.contextmanager
def running_operator(
    cluster: EmulatedCluster,
    namespaces: tuple[str, ...] = (),
    timeout: float = 30,
    debug: bool = False,
) -> Iterator:
    """The real operator (kopf run -m pagedserve.operator.handlers, standalone) in a thread,
    pointed at the cluster through $KUBECONFIG (set it first, e.g. with monkeypatch.setenv).
    Yields the kopf.testing.KopfRunner; leaving the block stops the operator. debug: log
    everything kopf does (its patches' bodies too)."""
    import kopf
    from kopf.testing import KopfRunner

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # kmock serves no CRD objects to scan
    scope = [arg for ns in namespaces for arg in ("-n", ns)] or ["-A"]
    args = [
        "run",
        "--standalone",
        *(["--debug"] if debug else []),
        *scope,
        "-m",
        "pagedserve.operator.handlers",
    ]
    with KopfRunner(args, settings=settings, timeout=timeout) as runner:
        yield runner


def llmdeployment(name: str, namespace: str = "default", **spec) -> dict:
    """An LLMDeployment body; the spec defaults to the bundled model on CPU."""
    spec = {"model": "stories260K", "accelerator": "cpu", **spec}
    return {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def deployment_ready(kube: Kube, namespace: str, name: str, ready: int | None = None) -> None:
    """Report `ready` (default: all) of a Deployment's pods ready, as the Deployment controller
    does once they pass their readiness probes (the emulator runs no controllers)."""
    dep = kube.get("Deployment", namespace, name)
    want = dep["spec"]["replicas"]
    ready = want if ready is None else ready
    kube.patch(
        "Deployment",
        namespace,
        name,
        {
            "status": {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": want,
                "updatedReplicas": want,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "NewReplicaSetAvailable"
                        if ready == want
                        else "ReplicaSetUpdated",
                    }
                ],
            }
        },
        subresource="status",
    )


def diverged(kube: Kube, config: OperatorConfig, namespace: str, name: str) -> list[str]:
    """How an LLMDeployment's children differ from what its spec asks ([] once converged): each
    wanted child exists, is controlled by it (by uid) and matches; each unwanted one is absent."""
    owner = kube.get("LLMDeployment", namespace, name)
    if owner is None:
        return [f"LLMDeployment {namespace}/{name} does not exist"]
    problems = []
    for kind, desired in desired_children(owner, parse_spec(owner.get("spec")), config).items():
        live = kube.get(kind, namespace, child_name(kind, name))
        if desired is None:
            problems += [f"{kind} {name}: not asked for, still there"] if live is not None else []
        elif live is None:
            problems.append(f"{kind} {name}: missing")
        elif not controlled_by(live, owner["metadata"]["uid"]):
            problems.append(f"{kind} {name}: not controlled by uid {owner['metadata']['uid']}")
        elif not is_subset(desired, live):
            problems.append(f"{kind} {name}: differs from the spec")
    return problems


def condition(body: dict | None, kind: str) -> dict:
    """The status condition of that type, or {}."""
    for cond in ((body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def wait_for(check, timeout: float = 20.0, interval: float = 0.1, what: str = "a condition"):
    """Poll check() until it returns something truthy and return that; AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
