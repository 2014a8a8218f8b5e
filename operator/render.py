"""`pagedserve operator render -f FILE`: the children the operator would create, as a YAML stream.

Like `helm template`: the same pure builders as the running operator (manifests.desired_children)
and the body a create sends (apply.strip_none), with no cluster and no kopf connection. What
needs the cluster is left out: owner references (they carry the LLMDeployment's uid, which only
the API server assigns) and the checks that Secrets and an existing claim exist.
"""

import argparse
import dataclasses
import sys
from typing import Any

import yaml

from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.fields import SpecError
from pagedserve.operator.labels import API_VERSION, KIND
from pagedserve.operator.manifests import desired_children
from pagedserve.operator.spec import check_name, parse_spec


class RenderError(Exception):
    """A file that cannot be rendered; the message is one line naming what is wrong."""


def _owner(doc: Any, where: str, namespace: str) -> dict:
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        found = (
            (doc.get("apiVersion"), doc.get("kind"))
            if isinstance(doc, dict)
            else type(doc).__name__
        )
        raise RenderError(f"{where}: not an {API_VERSION} {KIND} (found {found})")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    # a uid only for kopf.adopt's owner reference, which _unowned removes again
    return {
        **doc,
        "metadata": {**meta, "namespace": meta.get("namespace") or namespace, "uid": "unassigned"},
    }


def render_objects(
    docs: list, namespace: str, config: OperatorConfig, source: str = "-"
) -> list[dict]:
    """Every child of every LLMDeployment in docs, in apply order; RenderError for a bad one."""
    out = []
    for i, doc in enumerate(d for d in docs if d is not None):
        owner = _owner(doc, f"{source}: document {i + 1}", namespace)
        try:
            check_name(owner["metadata"].get("name"))
            children = desired_children(owner, parse_spec(owner.get("spec")), config)
        except SpecError as exc:
            raise RenderError(f"{source}: {KIND} {owner['metadata'].get('name')}: {exc}") from None
        out += [_unowned(strip_none(child)) for child in children.values() if child is not None]
    return out


def _unowned(child: dict) -> dict:
    child["metadata"].pop("ownerReferences", None)
    return child


def _read(path: str) -> tuple[list, str]:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        return list(yaml.safe_load_all(text)), path
    except OSError as exc:
        raise RenderError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None


def run(args: argparse.Namespace) -> int:
    """Print the YAML stream; on a bad file one line on stderr and exit status 1."""
    try:
        settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(OperatorConfig)}
        config = OperatorConfig.from_env(**settings)
        docs, source = _read(args.filename)
        objects = render_objects(docs, args.render_namespace, config, source)
    except (RenderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
    return 0
