"""The operator's own configuration: default engine images and timing, from env vars or flags."""

import os
from dataclasses import dataclass, field, fields

from pagedserve import __version__

# accelerator -> the engine image tag suffix the Dockerfile's build recipes produce
IMAGE_SUFFIX = {"amd": "rocm", "nvidia": "cuda", "cpu": "cpu"}
IMAGE_REPOSITORY = "ghcr.io/pagedserve/pagedserve"


def _default_image(accelerator: str) -> str:
    return f"{IMAGE_REPOSITORY}:{__version__}-{IMAGE_SUFFIX[accelerator]}"


@dataclass(slots=True)
class OperatorConfig:
    """Everything an LLMDeployment does not say itself.

    Each field reads the env var PAGEDSERVE_<FIELD> (upper case) and the flag --<field-with-dashes>.
    """

    image_amd: str = field(default_factory=lambda: _default_image("amd"))
    image_nvidia: str = field(default_factory=lambda: _default_image("nvidia"))
    image_cpu: str = field(default_factory=lambda: _default_image("cpu"))
    # seconds between level-based passes over every LLMDeployment (drift repair, status refresh)
    resync_interval: float = 60.0
    # seconds before a resource whose Secret or claim is missing is tried again
    retry_delay: float = 120.0
    # the Pods metric the HPA averages; Prometheus Adapter must expose it under this name
    hpa_metric: str = "pagedserve:num_requests_waiting"
    # UID the model server runs as (the engine image's user); empty: the image decides
    run_as_user: str = "1001"
    # GIDs of the host's video and render groups, which own /dev/kfd and /dev/dri on ROCm nodes
    gpu_groups: str = "44,110"

    def image(self, accelerator: str) -> str:
        return getattr(self, f"image_{accelerator}")

    @property
    def gpu_group_ids(self) -> list[int]:
        return [int(g) for g in self.gpu_groups.replace(" ", "").split(",") if g]

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> "OperatorConfig":
        """Defaults, then PAGEDSERVE_* env vars, then overrides that are not None."""
        environ = os.environ if environ is None else environ
        config = cls()
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = environ.get(f"PAGEDSERVE_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(config, f.name))
            try:
                setattr(config, f.name, kind(raw))
            except ValueError:
                raise ValueError(
                    f"operator setting {f.name} must be a {kind.__name__}, got {raw!r}"
                ) from None
        _ = config.gpu_group_ids  # fail at start, not at the first GPU pod
        return config
