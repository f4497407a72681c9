"""The `faultline` command: one subcommand module each, registered here.

The operator commands (coordinator/cli/ops.py) need only the SDK's dependencies, so they work from the base
install (`pip install faultline-jobs`). The server commands need the `coordinator` extra: without it they are
still listed, and running one prints which extra to install instead of a ModuleNotFoundError.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

from coordinator import __version__

DISTRIBUTION = "faultline-jobs"
SERVER_EXTRA_INSTALL = f"pip install '{DISTRIBUTION}[coordinator]'"
# What the server commands import that the base install lacks (the `coordinator` extra).
SERVER_IMPORTS = ("asyncpg", "prometheus_client", "grpc_health", "grpc_reflection", "opentelemetry.sdk", "aiohttp")
# Server command modules, and the commands each registers (for the stand-ins when the extra is missing).
SERVER_MODULES = {
    "serve": {"coordinator": "run the coordinator (configuration from the environment)",
              "migrate": "apply pending migrations to DATABASE_URL (or the embedded Postgres) and exit"},
    "demo": {"demo": "run a coordinator with the example worker and producer"},
    "drill": {"drill": "run a failure drill (its own coordinator, workers, producers and database)"},
    "bench": {"bench": "measure end-to-end throughput and submit-to-start latency"},
    "keys": {"keys": "create, list and revoke API keys (uses DATABASE_URL)"},
    "console": {"console": "serve the operator web console (http://127.0.0.1:8089 by default)"},
}
EXIT_MISSING_EXTRA = 1
EXIT_USAGE = 2


def missing_server_imports() -> list[str]:
    """The server extra's modules that cannot be imported here; empty when the extra is installed."""
    missing = []
    for name in SERVER_IMPORTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def _needs_extra(command: str, missing: list[str]) -> argparse.ArgumentParser:
    def run(args: argparse.Namespace) -> int:
        print(f"faultline {command}: needs the server install ({', '.join(missing)} missing): {SERVER_EXTRA_INSTALL}",
              file=sys.stderr)
        return EXIT_MISSING_EXTRA

    parser = argparse.ArgumentParser(add_help=False)
    parser.set_defaults(func=run)
    return parser


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2 (subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="faultline", description="Faultline: fenced, durable jobs on PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"faultline {__version__} ({DISTRIBUTION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    missing = missing_server_imports()
    for module, commands in SERVER_MODULES.items():
        if missing:
            for command, about in commands.items():
                p = sub.add_parser(command, help=f"{about} [needs {DISTRIBUTION}[coordinator]]",
                                   parents=[_needs_extra(command, missing)], add_help=False)
                p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        else:
            __import__(f"coordinator.cli.{module}", fromlist=["register"]).register(sub)
    from coordinator.cli import ops

    ops.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    code: int = args.func(args)
    return code
