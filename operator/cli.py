"""`pagedserve operator`: run the LLMDeployment operator (kopf) against the current cluster;
`pagedserve operator render -f FILE`: print the children it would create, with no cluster."""

import argparse
import dataclasses

from pagedserve.operator.config import OperatorConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator for LLMDeployment resources",
        description="Reconcile LLMDeployment resources (pagedserve.io/v1alpha1) into model-server "
        "Deployments, Services, HPAs and PDBs. Uses the in-cluster service account, "
        "else $KUBECONFIG. Every setting also reads PAGEDSERVE_<SETTING> from the environment.",
    )
    _add_scope_args(p)
    p.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: $PAGEDSERVE_LOG_LEVEL or info",
    )
    g = p.add_argument_group("settings")
    for f in dataclasses.fields(OperatorConfig):
        g.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            help=f"(env PAGEDSERVE_{f.name.upper()})",
        )
    p.set_defaults(run=run)
    _add_render_parser(p.add_subparsers(dest="action", metavar="{render}"))


def _add_scope_args(p) -> None:
    """Which namespaces this operator serves, and whether it is the only one."""
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="serve LLMDeployments in this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="serve every namespace (the default when no --namespace is given)",
    )
    peers = p.add_mutually_exclusive_group()
    peers.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: this is the only operator (the default without --peering)",
    )
    peers.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help="kopf peering object name: of several operators, one is active",
    )


def _add_render_parser(subparsers) -> None:
    r = subparsers.add_parser(
        "render",
        help="print the objects the operator would create for LLMDeployments, as YAML",
        description="Render every child of the LLMDeployment(s) in FILE as a YAML stream, with the "
        "operator's own builders and settings (flags before `render`, or PAGEDSERVE_* env) "
        "and no cluster access. Owner references, which need the resource's uid, are left "
        "out. An invalid spec exits 1 with one line naming the field.",
    )
    r.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="LLMDeployment YAML; - reads stdin"
    )
    r.add_argument(
        "-n",
        "--namespace",
        dest="render_namespace",
        default="default",
        metavar="NS",
        help="namespace for resources whose metadata names none (default: default)",
    )
    r.set_defaults(run=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    # imported here: the whole `pagedserve` CLI builds this parser, also where only the
    # server extra is installed (no kubernetes client)
    from pagedserve.operator import render

    return render.run(args)


def _configure_logging(level: str) -> None:
    import logging

    import kopf

    # kopf's verbose means DEBUG, so it is never passed; the root level is then set exactly
    kopf.configure(debug=level == "debug", quiet=level in ("warning", "error"))
    logging.getLogger().setLevel(level.upper())


def run(args: argparse.Namespace) -> int:
    import os

    import kopf

    import pagedserve.operator.handlers  # noqa: F401  (registers the handlers)

    config = OperatorConfig.from_env(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(OperatorConfig)}
    )
    _configure_logging(args.log_level or os.environ.get("PAGEDSERVE_LOG_LEVEL", "info"))
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(config=config),
    )
    return 0
