"""The `faultline` command: one subcommand module each, registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from coordinator.cli import serve

# Each module exposes register(subparsers); its parser sets `func(args) -> int`.
COMMAND_MODULES = [serve]


def _optional_modules() -> list[object]:
    mods: list[object] = []
    for name in ("ops", "demo", "drill", "bench"):
        try:
            mods.append(__import__(f"coordinator.cli.{name}", fromlist=["register"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"coordinator.cli.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faultline", description="Faultline: fenced, durable jobs on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in [*COMMAND_MODULES, *_optional_modules()]:
        mod.register(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    code: int = args.func(args)
    return code
