"""Which worker process holds which TCP connection, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

LISTEN, ESTABLISHED = "0A", "01"


def socket_inodes(port: int, state: str) -> set[str]:
    """Inodes of the IPv4 TCP sockets whose local port is ``port``, in ``state`` (LISTEN, ESTABLISHED)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def process_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def children(pid: int) -> list[int]:
    """The child processes of every thread of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended since it was listed
            continue
    return found


def listening_workers(parent: int, port: int) -> dict[int, set[str]]:
    """Each child of ``parent`` that listens on ``port``, with the inodes of all its sockets."""
    listening = socket_inodes(port, LISTEN)
    workers = {}
    for child in children(parent):
        try:
            inodes = process_inodes(child)
        except FileNotFoundError:  # exited since listed
            continue
        if inodes & listening:
            workers[child] = inodes
    return workers


def connections_by_worker(parent: int, port: int) -> list[int]:
    """How many established connections on ``port`` each listening child of ``parent`` holds."""
    established = socket_inodes(port, ESTABLISHED)
    return sorted(len(inodes & established) for inodes in listening_workers(parent, port).values())


def record_split(parent: int, port: int, into: list[int]) -> None:
    """:func:`connections_by_worker` into ``into``; a ``threading.Timer`` target, to sample mid-run."""
    into.extend(connections_by_worker(parent, port))
