"""`faultline demo`: a coordinator (embedded Postgres unless DATABASE_URL is set), the example worker and producer."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LOG_DIR = ROOT / ".faultline"
# The embedded Postgres runs initdb on first use, which takes a while on a small machine.
STARTUP_TIMEOUT_S = 180.0
HEALTH_POLL_S = 0.25
# Runs the `faultline` command in a child without relying on the console script being on PATH.
CLI_MAIN = "import sys; from coordinator.cli import main; sys.exit(main())"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a coordinator with the example worker and producer")
    p.add_argument("--jobs", type=int, default=200, help="jobs the producer submits (default 200)")
    p.add_argument("--once", action="store_true", help="exit after the producer finishes instead of staying up")
    p.set_defaults(func=run)


def _pump(stream: IO[bytes], prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
        sys.stdout.flush()


def _spawn(name: str, args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    if log is not None:
        out = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, f"[{name}]"), daemon=True).start()
    return proc


def _wait_serving(addr: str, coordinator: subprocess.Popen[bytes], log: Path) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(addr) as ch:
        # typeshed's HealthStub omits the method attributes that the generated __init__ assigns.
        check: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse] = (
            health_pb2_grpc.HealthStub(ch).Check  # type: ignore[attr-defined]
        )
        while time.monotonic() < deadline:
            if coordinator.poll() is not None:
                print(f"faultline demo: the coordinator exited with {coordinator.returncode}; see {log}",
                      file=sys.stderr)
                return False
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    # SERVING from our own coordinator only: one that failed to bind has exited by now.
                    if coordinator.poll() is None:
                        return True
                    continue
            except grpc.RpcError:
                pass
            time.sleep(HEALTH_POLL_S)
    print(f"faultline demo: the coordinator did not become healthy in {STARTUP_TIMEOUT_S:.0f}s; see {log}",
          file=sys.stderr)
    return False


def _addresses_free(env: dict[str, str]) -> bool:
    """False (and says which) when the coordinator's gRPC or metrics address is taken, by an earlier demo say.

    Checked before the coordinator starts: its health answer must not come from another process on the port.
    """
    from coordinator.app import check_free
    from coordinator.errors import StartupError

    metrics_addr = env.get("FAULTLINE_METRICS_ADDR", "127.0.0.1:9464")
    try:
        check_free(env["FAULTLINE_GRPC_ADDR"], "FAULTLINE_GRPC_ADDR")
        if metrics_addr not in ("", "off"):
            check_free(metrics_addr, "FAULTLINE_METRICS_ADDR")
    except StartupError as exc:
        print(f"faultline demo: {exc}; is another demo or coordinator running? Stop it, or set that variable",
              file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> int:
    if not EXAMPLES.is_dir():
        print(f"faultline demo: needs a source checkout (no examples/ beside the package in {ROOT})",
              file=sys.stderr)
        return 1
    LOG_DIR.mkdir(exist_ok=True)
    env = dict(os.environ)
    addr = env.setdefault("FAULTLINE_GRPC_ADDR", "127.0.0.1:50051")
    env.setdefault("FAULTLINE_ADDR", addr)
    if not _addresses_free(env):
        return 1
    log = LOG_DIR / "demo-coordinator.log"
    where = env.get("DATABASE_URL") or "an embedded Postgres (DATABASE_URL not set)"
    print(f"faultline demo: starting the coordinator on {addr} with {where}; its log: {log}")
    coordinator = _spawn("coordinator", [sys.executable, "-m", "coordinator"], env, log)
    children = [coordinator]
    try:
        if not _wait_serving(addr, coordinator, log):
            return 1
        metrics_addr = env.get("FAULTLINE_METRICS_ADDR", "127.0.0.1:9464")
        print(f"faultline demo: coordinator SERVING; metrics at http://{metrics_addr}/metrics")
        children.append(_spawn("worker", [sys.executable, str(EXAMPLES / "worker.py")], env))
        producer = _spawn("producer", [sys.executable, str(EXAMPLES / "producer.py"), str(args.jobs)], env)
        children.append(producer)
        code = producer.wait()
        if code != 0:
            print(f"faultline demo: the producer failed with exit code {code}", file=sys.stderr)
            return code
        if args.once:
            return 0
        from coordinator.console.config import ADDR_DEFAULT as CONSOLE_ADDR_DEFAULT
        from coordinator.console.config import ADDR_ENV as CONSOLE_ADDR_ENV

        console_addr = env.get(CONSOLE_ADDR_ENV) or CONSOLE_ADDR_DEFAULT
        if console_addr.strip().lower() != "off":
            # The web console beside the demo (FAULTLINE_CONSOLE_ADDR=off leaves it out); it prints its address.
            children.append(_spawn("console", [sys.executable, "-c", CLI_MAIN, "console", "--addr", console_addr,
                                               "--coordinator", addr], env))
        print("faultline demo: all jobs done. Faultline keeps running; open the console, try `faultline jobs ls`,\n"
              f"  `faultline queues`, or `grpcurl -plaintext {addr} list`. Ctrl-C stops everything.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                if coordinator.poll() is not None:
                    print("faultline demo: the coordinator exited", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
