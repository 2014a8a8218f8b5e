"""The pagedserve command line.

Each subcommand lives with its component; parsers import no torch, so `pagedserve operator`
and every `--help` stay light.
"""
import argparse
import importlib
import sys

# subcommand -> module with add_parser(subparsers) and run(args)
SUBCOMMANDS = {
    "generate": "pagedserve.engine.generate_cli",
    "bench": "pagedserve.benchmarks.cli",
    "serve": "pagedserve.server.cli",
    "operator": "pagedserve.operator.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedserve",
                                     description="LLM serving: offline generation, an "
                                                 "OpenAI-compatible server, a Kubernetes operator.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def _version() -> str:
    # the package's own attribute, not installed metadata: a checkout run without
    # `pip install` (python -m pagedserve from the root, as on a bare GPU machine) has none
    from pagedserve import __version__
    return f"pagedserve {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
