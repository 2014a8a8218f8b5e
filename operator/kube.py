"""A small JSON-in, JSON-out layer over the official kubernetes client.

Manifests stay plain dicts end to end (no model classes to convert through), and every call
the operator makes goes through these five methods, which is what rbac.RULES lists.
"""

import json
import os

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from pagedserve import __version__

# kind -> (group, version, plural); all of them are namespaced
KINDS = {
    "LLMDeployment": ("pagedserve.io", "v1alpha1", "llmdeployments"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    # custom resources of other projects: a cluster may not serve them (apply.KindNotServed)
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    "InferencePool": ("inference.networking.k8s.io", "v1", "inferencepools"),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    "Secret": ("", "v1", "secrets"),
    "Event": ("", "v1", "events"),
}
USER_AGENT = f"pagedserve-operator/{__version__}"
TIMEOUT = 30.0


def path(
    kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None
) -> str:
    group, ver, plural = KINDS[kind]
    url = f"/api/{ver}" if not group else f"/apis/{group}/{ver}"
    if namespace:
        url += f"/namespaces/{namespace}"
    url += f"/{plural}"
    if name:
        url += f"/{name}"
    return url + (f"/{subresource}" if subresource else "")


class Kube:
    """get/list/create/patch/delete of the KINDS above, as dicts; ApiException on failures."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self.api.user_agent = USER_AGENT

    @classmethod
    def from_environment(cls) -> "Kube":
        """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException:
            # read $KUBECONFIG now: the client's default was fixed when it was imported
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg
            )
        return cls(client.ApiClient(cfg))

    def close(self) -> None:
        self.api.close()

    def _call(self, method: str, url: str, body=None, content_type: str = "application/json"):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, full_url, headers, body, _ = self.api.param_serialize(
            method, url, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.api.call_api(
            method, full_url, header_params=headers, body=body, _request_timeout=TIMEOUT
        )
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response, body=data.decode(errors="replace"))
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        """The object, or None if it does not exist."""
        try:
            return self._call("GET", path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        return self._call("GET", path(kind, namespace))["items"]

    def create(self, kind: str, namespace: str, body: dict) -> dict:
        return self._call("POST", path(kind, namespace), body)

    def patch(
        self, kind: str, namespace: str, name: str, body: dict, subresource: str | None = None
    ) -> dict:
        """A JSON merge patch: lists are replaced whole, null deletes a key."""
        return self._call(
            "PATCH",
            path(kind, namespace, name, subresource),
            body,
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", path(kind, namespace, name), {"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise
