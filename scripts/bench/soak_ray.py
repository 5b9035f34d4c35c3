"""What a soak watches on a Ray cluster: every live actor's PID, and the `llm` app's KV shard.

Why the GCS actor table (``ray._private.state.actors``) and not
``ray.util.state.list_actors``: the state API asks the dashboard, and test and
benchmark clusters run without one (``include_dashboard=False``); the table
is what the dashboard itself reads. Serve's controller, proxies and replicas
are actors too, so one list covers the gateway, every service, the LLM
replicas, the KV shards and the coordinator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from scripts.bench.soak import CacheSample


def actor_processes() -> dict[str, int]:
    """Every live actor of the connected cluster: a readable, unique label -> its PID.

    A restarted actor gets a new PID (or, for a Serve replica, a new name), so
    the label of the old one no longer maps to the same PID.
    """
    from ray._private.state import actors

    alive = sorted(actors(actor_state_name="ALIVE").items())
    classes = Counter(info["ActorClassName"] for _, info in alive)
    out: dict[str, int] = {}
    for actor_id, info in alive:
        cls, name = info["ActorClassName"], info.get("Name") or ""
        if name.startswith("SERVE_REPLICA::"):  # SERVE_REPLICA::<app>#<deployment>#<replica id>
            label = "replica " + name.removeprefix("SERVE_REPLICA::").replace("#", "/", 1)
        elif classes[cls] == 1:  # the controller, a proxy, the coordinator, the one shard
            label = cls
        else:
            label = f"{cls} {name or actor_id[:8]}"
        if info.get("Pid"):
            out[label] = int(info["Pid"])
    return out


def shard_cache_probe(app_name: str = "llm", *, timeout_s: float = 30.0) -> Callable[[], CacheSample]:
    """A probe of the KV shard that the app's (first) `LLMServer` replica uses, read from the shard itself.

    Straight from the shard actor, not through the replica: the replica is
    busy with the load, and the shard's own numbers are the ones a budget binds.
    """
    import ray
    from ray import serve

    from cache_actors.actors.spec import NAMESPACE

    stats = serve.get_deployment_handle("LLMServer", app_name=app_name).get_stats.remote().result(timeout_s=timeout_s)
    if not stats.get("shard"):
        raise RuntimeError(f"the {app_name} app's replica has no KV shard (enable_distributed is off): {stats}")
    shard = ray.get_actor(stats["shard"], namespace=NAMESPACE)

    def probe() -> CacheSample:
        s = ray.get(shard.stats.remote(), timeout=timeout_s)
        return CacheSample(bytes_used=int(s["bytes_used"]), bytes_capacity=int(s["bytes_capacity"]),
                           blocks=int(s["blocks"]), slots_used=int(s["capacity_blocks"]) - int(s["free_blocks"]),
                           evicted_blocks=int(s["evicted_blocks"]))

    return probe


def kill_kv_actors(timeout_s: float = 30.0) -> int:
    """Kill every KV shard and the coordinator (they are detached); returns how many.

    A shard's name leaves out its size, so an `llm` app deployed after an
    earlier one with the same model and block size would reuse that app's
    shard, with that app's budget: a soak starts (and ends) without any.
    """
    from cache_actors.actors.cluster_admin import shutdown_kv_actors

    outcomes = shutdown_kv_actors(close=False, gone_timeout_s=timeout_s)
    left = [o.name for o in outcomes if not o.ok]
    if left:
        raise TimeoutError(f"KV actors still listed {timeout_s:g} s after being killed: {left}")
    return len(outcomes)
