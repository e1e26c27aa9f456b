"""Processes and ports, read from ``/proc`` and the kernel: what serving, its probes and its tests share.

* ``descendants(pid)`` / ``children_named(pid, name)`` / ``command_line(pid)``: the process tree below a
  process, and what each process is (Linux ``/proc``; elsewhere they find nothing).
* ``tree_rss_mb(pid)``: resident memory of a process and everything below it.
* ``free_ports(n)``: ports the kernel says are free at this moment.
* ``alive(pid)``: exists and is not a zombie.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["process_table", "descendants", "children_named", "command_name", "command_line", "alive", "tree_rss_mb", "free_ports"]

PROC = Path("/proc")


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    """``(command name, the fields after it)`` from ``/proc/PID/stat``; None when the process is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    close = stat.rindex(")")  # the name may itself hold spaces and parentheses
    return stat[stat.index("(") + 1 : close], stat[close + 2 :].split()


def process_table() -> dict[int, tuple[int, str]]:
    """Every visible process: ``{pid: (parent pid, command name)}``."""
    table = {}
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return table
    for entry in entries:
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            table[int(entry.name)] = (int(fields[1][1]), fields[0])
    return table


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, grandchildren, ..."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in process_table().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def children_named(pid: int, name: str) -> list[int]:
    """Processes below ``pid`` whose command name (``comm``) is ``name``."""
    return [child for child in descendants(pid) if command_name(child) == name]


def command_name(pid: int) -> str:
    """The process's command name (``comm``), or "" when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else ""


def command_line(pid: int) -> list[bytes]:
    """The process's arguments as the kernel shows them to other users (``ps -eo args``); [] when gone."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (one that exited and waits for its parent to collect it)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[1][0] != "Z"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and everything below it, MB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += int((PROC / str(p) / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    return total / 1e6


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` at this moment (the kernel picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
