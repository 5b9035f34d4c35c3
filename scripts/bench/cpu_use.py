"""CPU time spent while a measure runs: the whole machine's, and each role of our Ray cluster.

Why: on a 2-core machine the wall-clock ratios of `blatam bench peers` do
not say where our time goes. The model's two threads share the cores with
the Serve proxy (or HAProxy), the ingress replica, the KV shard and Ray's own processes,
and a request's trip through them costs CPU that the model then lacks.
Measured by hand for issue 15 (16 requests at once): the model's process
took ~84% of the CPU, the rest went to the proxy, the ingress, the shard and
Ray's background. This module makes that a figure of every run.

Read from ``/proc`` (Linux only; elsewhere every figure is None): the
machine's busy time from ``/proc/stat``, and per process ``utime + stime``
from ``/proc/PID/stat`` of the descendants of one process (the benchmark's
own, which starts our private Ray cluster: GCS, raylet and every worker are
below it, the peer server is not).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")

#: A process's role by the start of its title (Ray workers set it to ``ray::<actor or task>``).
_ROLES = (
    ("ray::ServeReplica:", None),  # the deployment's name, below
    ("ray::ProxyActor", "Serve proxy"),
    ("ray::ServeController", "Serve controller"),
    ("ray::KVCacheShard", "KV shard"),
    ("ray::KVCacheCoordinator", "KV coordinator"),
)


def role_of(title: str) -> str:
    """``LLMServer``, ``LLMIngress``, ``Serve proxy``, ``HAProxy``, ``KV shard``... or ``Ray system`` for the rest."""
    if title.rsplit("/", 1)[-1] == "haproxy":  # Ray's HAProxy, as its binary or our error-page script names it
        return "HAProxy"
    for prefix, role in _ROLES:
        if title.startswith(prefix):
            if role is None:  # ray::ServeReplica:<app>:<deployment>, + .<method> while Ray runs one
                # One role per process whatever it runs: a run's marks may catch it idle, then in a call, and a
                # role per title would count its whole life (1.6 s of the ingress's start-up seen in one run).
                words = title.split(":")[-1].split()
                return (words[0].split(".")[0] if words else "") or "replica"
            return role
    return "Ray system"


def machine_busy_s() -> float | None:
    """Seconds of CPU the whole machine has spent busy since boot (all cores), None without /proc."""
    try:
        fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user and nice
    return (sum(values) - idle - guest) / _TICKS


def _process(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, CPU seconds, short name) of one process; None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    after = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(after[1]), (int(after[11]) + int(after[12])) / _TICKS, stat[stat.index("(") + 1: stat.rindex(")")]


def _title(pid: int, name: str) -> str:
    """The process's title (a Ray worker's ``ray::...``), read only for the processes counted; ``name`` if none."""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace") or name
    except OSError:
        return name


def descendants_cpu_s(root: int) -> dict[str, float]:
    """CPU seconds of every living process below ``root`` (not itself), summed per `role_of`."""
    table = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if entry.name.isdigit():
            info = _process(int(entry.name))
            if info is not None:
                table[int(entry.name)] = info
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _, _) in table.items():
        children[parent].append(pid)
    roles: dict[str, float] = defaultdict(float)
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        _, seconds, name = table[pid]
        roles[role_of(_title(pid, name))] += seconds
        stack.extend(children.get(pid, ()))
    return dict(roles)


@dataclass(frozen=True, slots=True)
class CpuMark:
    """The counters at one moment."""

    machine_s: float | None
    roles: dict[str, float] | None


def mark(root: int | None, *, starting: bool) -> CpuMark:
    """Now: the machine's busy seconds, and the roles below ``root`` (None: roles not taken).

    ``starting``: the mark before a run reads the machine last and the one
    after reads it first, so the scan of ``/proc`` for the roles (a few ms)
    stays out of the machine's figure.
    """
    if starting:
        roles = descendants_cpu_s(root) if root is not None else None
        return CpuMark(machine_busy_s(), roles)
    machine = machine_busy_s()
    return CpuMark(machine, descendants_cpu_s(root) if root is not None else None)


@dataclass(slots=True)
class CpuTally:
    """CPU seconds summed over the recorded runs of each measure, with how many runs."""

    machine_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    roles: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    runs: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, measure: str, before: CpuMark, after: CpuMark) -> None:
        self.runs[measure] += 1
        if before.machine_s is not None and after.machine_s is not None:
            self.machine_s[measure] += after.machine_s - before.machine_s
        if before.roles is not None and after.roles is not None:
            for role, seconds in after.roles.items():
                # A process that started during the run counts from 0; one that ended is lost (rare: workers stay).
                self.roles[measure][role] += max(0.0, seconds - before.roles.get(role, 0.0))

    def per_run_ms(self) -> dict[str, dict[str, float | dict[str, float] | None]]:
        """Per measure: the machine's CPU ms per run and, where taken, each role's."""
        out: dict[str, dict[str, float | dict[str, float] | None]] = {}
        for measure, runs in self.runs.items():
            machine = self.machine_s.get(measure)
            roles = self.roles.get(measure)
            out[measure] = {
                "machine_ms": 1000 * machine / runs if machine is not None and runs else None,
                "roles_ms": {role: 1000 * s / runs for role, s in sorted(roles.items(), key=lambda r: -r[1])}
                if roles else None,
            }
        return out
