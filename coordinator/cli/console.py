"""`faultline console`: serve the operator web console against one or more coordinators."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from coordinator.cli.ops import ADDR_DEFAULT as COORDINATOR_ADDR_DEFAULT
from coordinator.cli.ops import ADDR_ENV as COORDINATOR_ADDR_ENV
from coordinator.console.config import (
    ADDR_DEFAULT,
    ADDR_ENV,
    ADDR_OFF,
    ConsoleConfig,
    is_loopback,
    loopback_hosts,
    split_addr,
)
from coordinator.errors import ConfigError

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("console", help="serve the operator web console (http://127.0.0.1:8089 by default)")
    p.add_argument("--addr", default=os.environ.get(ADDR_ENV) or ADDR_DEFAULT,
                   help=f"HOST:PORT to serve on, or 'off' (default: ${ADDR_ENV} or {ADDR_DEFAULT})")
    p.add_argument("--coordinator", action="append", default=None, metavar="HOST:PORT",
                   help=f"a coordinator's gRPC address, repeatable; the first that answers serves each page, the "
                        f"workers page asks every one (default: ${COORDINATOR_ADDR_ENV} or {COORDINATOR_ADDR_DEFAULT})")
    p.add_argument("--jaeger-url", default=os.environ.get("FAULTLINE_CONSOLE_JAEGER_URL") or None, metavar="URL",
                   help="a Jaeger UI's base URL: job pages link to its trace (default: $FAULTLINE_CONSOLE_JAEGER_URL)")
    p.add_argument("--tls", action="store_true", default=None,
                   help="use TLS to the coordinators trusting the system's roots (implied by --ca-cert or "
                        "--client-cert)")
    p.add_argument("--ca-cert", type=Path, default=None,
                   help="PEM file of the CA to trust (default: $FAULTLINE_TLS_CA)")
    p.add_argument("--client-cert", type=Path, default=None,
                   help="PEM client certificate for mTLS (default: $FAULTLINE_TLS_CLIENT_CERT)")
    p.add_argument("--client-key", type=Path, default=None,
                   help="PEM key of --client-cert (default: $FAULTLINE_TLS_CLIENT_KEY)")
    p.add_argument("--secure-cookie", action="store_true",
                   help="mark the session cookie Secure (the console is served through an HTTPS proxy)")
    p.set_defaults(func=run_console)


def run_console(args: argparse.Namespace) -> int:
    from coordinator import logs

    logs.setup()
    if args.addr.strip().lower() == ADDR_OFF:
        print(f"faultline console: disabled ({ADDR_ENV} or --addr is 'off')")
        return 0
    try:
        cfg, host, port = _config(args)
    except (ConfigError, ValueError) as exc:
        print(f"faultline console: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_serve(cfg, host, port))
    except OSError as exc:
        print(f"faultline console: cannot serve on {args.addr}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> tuple[ConsoleConfig, str, int]:
    from worker_sdk._channel import tls_credentials

    host, port = split_addr(args.addr.strip())
    targets = tuple(args.coordinator or [os.environ.get(COORDINATOR_ADDR_ENV) or COORDINATOR_ADDR_DEFAULT])
    for target in targets:
        split_addr(target)
    credentials = tls_credentials(tls=args.tls, ca_cert=args.ca_cert, client_cert=args.client_cert,
                                  client_key=args.client_key)
    allowed = (loopback_hosts(port) | {f"{host}:{port}"}) if is_loopback(host) else frozenset()
    cfg = ConsoleConfig(coordinators=targets, jaeger_url=args.jaeger_url, credentials=credentials,
                        allowed_hosts=allowed, secure_cookie=args.secure_cookie)
    return cfg, host, port


async def _serve(cfg: ConsoleConfig, host: str, port: int) -> int:
    from aiohttp import web

    from coordinator.console.app import build_app
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(cfg), handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        print(f"faultline console: serving on http://{shown}:{port} (coordinators: {', '.join(cfg.coordinators)})",
              flush=True)
        await stop.wait()
        print("faultline console: stopping", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0
