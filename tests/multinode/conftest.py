"""Two hosts for multi-node tests: Linux network namespaces joined by a veth pair, else loopback."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Host:
    """One test node: the address peers reach it at, its interface, and how to run a command on it."""

    address: str
    interface: str
    prefix: tuple[str, ...]  # ("ip", "netns", "exec", NAME) or () on loopback


@dataclass(frozen=True)
class Hosts:
    nodes: tuple[Host, Host]
    isolated: bool  # True: separate network namespaces; False: both on this machine's loopback
    port: int  # a free rendezvous port on node 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _create_namespaces(names: tuple[str, str], links: tuple[str, str], subnet: int) -> tuple[Host, Host]:
    """Namespaces with only ``lo`` and one end of a veth pair each, addressed 10.213.<subnet>.1/.2."""
    for name in names:
        _ip("netns", "add", name)
    _ip("link", "add", links[0], "netns", names[0], "type", "veth", "peer", "name", links[1], "netns", names[1])
    hosts = []
    for index, (name, link) in enumerate(zip(names, links)):
        address = f"10.213.{subnet}.{index + 1}"
        _ip("-n", name, "addr", "add", f"{address}/30", "dev", link)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", link, "up")
        hosts.append(Host(address, link, ("ip", "netns", "exec", name)))
    return hosts[0], hosts[1]


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[Hosts]:
    """Two isolated hosts when this process may create network namespaces (root), else loopback.

    Names are unique per test run, and the namespaces (with their veth pair) are deleted afterwards
    even when the test or the setup fails.
    """
    tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
    names, links = (f"pfc-{tag}-0", f"pfc-{tag}-1"), (f"pfc{tag}a", f"pfc{tag}b")
    try:
        try:
            nodes = _create_namespaces(names, links, subnet=secrets.randbelow(250) + 1)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", "") or error
            warnings.warn(f"cannot create network namespaces ({str(detail).strip()}); both nodes run on loopback",
                          stacklevel=1)
            loopback = Host("127.0.0.1", "lo", ())
            yield Hosts((loopback, loopback), isolated=False, port=_free_loopback_port())
        else:
            yield Hosts(nodes, isolated=True, port=29400)
    finally:
        for name in names:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
