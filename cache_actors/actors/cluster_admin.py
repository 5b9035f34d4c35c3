"""Operate the KV actors of a running cluster: list, clear and remove the shards and the coordinator.

The shards and the coordinator are detached on purpose: they outlive the
`LLMServer` replica that created them, so a replica restarted by Serve (or a
redeploy of the app) finds the cache still warm. The price is that
``serve shutdown`` leaves them running with their pools; `shutdown_kv_actors`
is how an operator removes them (``blatam cache shutdown``). Every call is
bounded: an actor that does not answer is killed anyway and reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import ray

from cache_actors.actors.spec import COORDINATOR_NAME, NAMESPACE
from cache_actors.core.hashing import tenant_tag


@dataclass(frozen=True, slots=True)
class ActorOutcome:
    """What happened to one KV actor; ``note`` says what went wrong, if anything."""

    name: str
    kind: str  # "shard" or "coordinator"
    ok: bool
    note: str = ""
    blocks: int = 0  # blocks removed, where the verb removes blocks


def kv_actor_names() -> list[str]:
    """Names of the live KV actors in the connected cluster, the coordinator last."""
    names = sorted(e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e.get("namespace") == NAMESPACE)
    return sorted(names, key=lambda name: name == COORDINATOR_NAME)


def one_line_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of what went wrong; a RayTaskError is shown by the actor's own exception."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:limit]


def gather_calls(calls: dict[Hashable, Any], timeout_s: float,
                 on_done: Callable[[Hashable], None] | None = None) -> dict[Hashable, tuple[Any, str]]:
    """{key: (result, "")} or {key: (None, why)} for remote calls sent at once, all under one deadline,
    reporting each key as its call finishes (a dead or stuck actor costs one timeout, never a hang)."""
    by_ref = {ref: key for key, ref in calls.items()}
    pending = list(by_ref)
    out: dict[Hashable, tuple[Any, str]] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        key = by_ref[ready[0]]
        try:
            out[key] = (ray.get(ready[0]), "")
        except ray.exceptions.RayError as exc:
            out[key] = (None, one_line_error(exc))
        if on_done is not None:
            on_done(key)
    for ref in pending:
        out[by_ref[ref]] = (None, f"no answer within {timeout_s:g} s")
    return out


def _kind(name: str) -> str:
    return "coordinator" if name == COORDINATOR_NAME else "shard"


def shard_names() -> list[str]:
    return [name for name in kv_actor_names() if _kind(name) == "shard"]


def clear_shards(tenant: str | None = None, *, timeout_s: float = 30.0,
                 on_done: Callable[[Hashable], None] | None = None) -> list[ActorOutcome]:
    """Drop every cached block of every shard, or only ``tenant``'s chains (a chain a request holds right now
    stays, and is reported). All shards at once under one deadline; pools stay allocated, and the coordinator
    forgets the blocks through the shards' events."""
    tag = tenant_tag(tenant) if tenant is not None else None
    outcomes: list[ActorOutcome] = []
    calls = {}
    for name in shard_names():
        try:
            calls[name] = ray.get_actor(name, namespace=NAMESPACE).clear.remote(tag)
        except ValueError:  # gone meanwhile
            continue
    for name, (reply, why) in gather_calls(calls, timeout_s, on_done).items():
        if not why:
            kept = reply["in_use"]
            note = f"{kept} block(s) in use by a running request kept" if kept else ""
            outcomes.append(ActorOutcome(name, "shard", True, note, blocks=reply["removed"]))
        else:
            outcomes.append(ActorOutcome(name, "shard", False, why))
    return sorted(outcomes, key=lambda o: o.name)


def shutdown_kv_actors(*, close: bool = True, close_timeout_s: float = 10.0,
                       gone_timeout_s: float = 30.0) -> list[ActorOutcome]:
    """Close each shard (tiers, pool; unless not `close`), then kill every KV actor without restart; wait until
    none is listed (an actor still listed after `gone_timeout_s` is an outcome that is not ok)."""
    outcomes = []
    for name in kv_actor_names():
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            continue  # gone meanwhile
        note = ""
        if close and _kind(name) == "shard":
            try:
                ray.get(handle.close.remote(), timeout=close_timeout_s)
            except ray.exceptions.RayError as exc:  # killed below either way
                note = f"did not close cleanly ({type(exc).__name__}); killed"
        ray.kill(handle, no_restart=True)
        outcomes.append(ActorOutcome(name, _kind(name), not note, note))
    deadline = time.monotonic() + gone_timeout_s
    while left := kv_actor_names():
        if time.monotonic() > deadline:
            outcomes += [ActorOutcome(name, _kind(name), False, f"still listed after {gone_timeout_s:g} s")
                         for name in left]
            break
        time.sleep(0.2)
    return outcomes
