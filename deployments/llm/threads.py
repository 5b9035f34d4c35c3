"""How many torch threads an `LLMServer` replica runs: the CPUs Ray gives it.

Ray sets ``OMP_NUM_THREADS`` in a worker to the CPUs its actor reserved, and
to 1 when it reserved none (``num_cpus: 0``, "to avoid performance
degradation with many workers"). A replica that asks for no CPU therefore
prefills on one core even on an idle machine: measured on 2 cores, a
2,049-token prompt took 1,436 ms with one thread and 997 ms with two. So the
replica's threads follow its ``num_cpus`` (serve_config.yaml gives LLMServer
the machine's cores), and ``num_threads`` in the app's args overrides that.

The choice is applied with ``torch.set_num_threads`` rather than left to
``OMP_NUM_THREADS``: torch reads the variable once, when its thread pool
starts, which may be before Ray sets it in this worker.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

logger = logging.getLogger(__name__)  # routed to the replica log: `worker_logs.route_package_logs`


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    """The torch threads of a replica and where the number came from."""

    threads: int | None
    """None: leave torch's default (not inside a Ray worker, e.g. Serve's local testing mode)."""
    cpus: float | None
    """CPUs Ray reserved for this worker (None outside a Ray worker)."""
    source: str
    """``num_threads`` (the setting), ``num_cpus`` (the reservation) or ``default``."""

    def describe(self) -> str:
        """Why this many, for the replica's start-up log line."""
        cpus = "outside a Ray worker" if self.cpus is None else f"num_cpus {self.cpus:g}"
        if self.threads is None:
            return f"torch's default, {cpus}"
        return f"set from {self.source}, {cpus}"


def reserved_cpus() -> float | None:
    """CPUs Ray reserved for the current worker; 0.0 when it reserved none; None outside a Ray worker."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return float(context.get_assigned_resources().get("CPU", 0.0))


def choose_threads(num_threads: int | None, cpus: float | None) -> ThreadChoice:
    """The replica's torch threads: ``num_threads`` if set, else its whole reserved CPUs (at least 1).

    A replica that reserved no CPU gets 1 thread, as Ray intends (several such
    workers share the node), and a warning that says how to give it more.
    """
    if num_threads is not None:
        if cpus is not None and num_threads > max(cpus, 1):
            logger.warning("num_threads=%d exceeds the %g CPUs Ray reserved for this LLM replica: other work Ray "
                           "places on this node competes for those cores", num_threads, cpus)
        return ThreadChoice(num_threads, cpus, "num_threads")
    if cpus is None:
        return ThreadChoice(None, None, "default")
    if cpus < 1:
        logger.warning("this LLM replica reserved %g CPUs, so torch runs on 1 thread; give LLMServer "
                       "ray_actor_options.num_cpus (serve_config.yaml) or set num_threads", cpus)
    return ThreadChoice(max(math.floor(cpus), 1), cpus, "num_cpus")


def replica_threads(num_threads: int | None) -> ThreadChoice:
    """`choose_threads` for the current worker."""
    return choose_threads(num_threads, reserved_cpus())
