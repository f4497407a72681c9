"""A network namespace joined to the host by a veth pair: the partition drill's root-only variant.

The worker runs inside the namespace (`ip netns exec`) and reaches the coordinator over the veth;
partition() makes both ends drop every packet (a blackhole route to the peer on each side), a real
black hole for TCP: no reset, no error, only retransmissions, until heal() removes the routes.
Needs root and iproute2.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid

from coordinator.drills.stack import DrillError

IP_TIMEOUT_S = 10
# A /30 per link inside 10.213.0.0/16 (RFC 1918), picked at random to avoid a neighbour's.
SUBNET_FIRST_OCTETS = "10.213"


def available() -> str | None:
    """Why the variant cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


class NetnsLink:
    """Create with up(), fault with partition()/heal(), remove with down()."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ns = f"fl{tag}"
        self.host_if = f"fl{tag}h"
        self.ns_if = f"fl{tag}n"
        block = random.randrange(0, 16_384) * 4
        base = f"{SUBNET_FIRST_OCTETS}.{block // 256}.{block % 256}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self.host_ip = f"{prefix}.{last + 1}"
        self.ns_ip = f"{prefix}.{last + 2}"
        self._up = False

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = [*(["ip", "netns", "exec", self.ns] if ns else []), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
        if out.returncode != 0:
            raise DrillError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def up(self) -> NetnsLink:
        self._ip("ip", "netns", "add", self.ns)
        self._up = True
        self._ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("ip", "link", "set", self.ns_if, "netns", self.ns)
        self._ip("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("ip", "link", "set", self.host_if, "up")
        self._ip("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=True)
        self._ip("ip", "link", "set", self.ns_if, "up", ns=True)
        self._ip("ip", "link", "set", "lo", "up", ns=True)
        return self

    def partition(self) -> None:
        # A /32 blackhole route on each side beats the /30 link route: packets to the peer are
        # discarded silently (no ICMP, no reset), in both directions. (netem loss would do the same,
        # but its kernel module is often missing in containers; routes need nothing extra.)
        self._ip("ip", "route", "add", "blackhole", f"{self.ns_ip}/32")
        self._ip("ip", "route", "add", "blackhole", f"{self.host_ip}/32", ns=True)

    def heal(self) -> None:
        self._ip("ip", "route", "del", "blackhole", f"{self.ns_ip}/32")
        self._ip("ip", "route", "del", "blackhole", f"{self.host_ip}/32", ns=True)

    def down(self) -> None:
        if not self._up:
            return
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=IP_TIMEOUT_S)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=IP_TIMEOUT_S)
        self._up = False
