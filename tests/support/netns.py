"""A network namespace joined to the host by a veth pair: a second "host" whose one link a
test can cut and restore. Only our own interfaces are touched, and everything is removed
however the test ends."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tests.support.services import unavailable


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


@dataclass(frozen=True)
class Link:
    """Namespace `ns` reaches the host at `host_ip` (and the host it at `ns_ip`) over a /30."""

    ns: str
    host_if: str
    net: str
    host_ip: str
    ns_ip: str

    def exec_prefix(self) -> Sequence[str]:
        """What runs a command inside the namespace (it execs: the pid stays the command's)."""
        return ("ip", "netns", "exec", self.ns)

    def down(self) -> None:
        """Cut the link: packets either way are dropped; open connections stall, not reset."""
        _ip("link", "set", self.host_if, "down")

    def up(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _free_net() -> ipaddress.IPv4Network:
    used = _ip("-o", "-4", "addr", "show")
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.231.{random.randrange(256)}.{4 * random.randrange(64)}/30")
        if str(net.network_address).rsplit(".", 1)[0] + "." not in used:
            return net
    raise AssertionError("no free 10.231.x.x/30 for a test link")


@contextlib.contextmanager
def namespace_link() -> Iterator[Link]:
    if shutil.which("ip") is None:
        unavailable("iproute2's ip is missing (for a network namespace)")
    if os.geteuid() != 0:
        unavailable("ip netns needs root")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"bnlab-{tag}", f"bnh{tag}", f"bnn{tag}"
    net = _free_net()
    host_ip, ns_ip = (str(a) for a in net.hosts())
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield Link(ns, host_if, str(net), host_ip, ns_ip)
    finally:
        for pid in _ip("netns", "pids", ns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            _ip("link", "del", host_if)  # and its peer; gone with the namespace otherwise
        _ip("netns", "del", ns)
