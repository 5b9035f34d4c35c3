"""Stop Ray Serve on the connected cluster and wait until it is gone, without Ray's retry warning.

`serve.shutdown()` waits inside the controller's ``graceful_shutdown(wait=True)``,
a call still in flight when the controller kills itself at the end. The
controller is an actor with infinite task retries, so Ray logs "Task
ServeController.graceful_shutdown failed. There are infinite retries remaining,
so the task will be retried" on every stop (the Ctrl-C of `blatam up`, the end
of a benchmark). `stop_serve` asks with ``wait=False`` (the call returns as soon
as the flag is set) and then polls the GCS for the controller's name, which
disappears once it has deleted every app and exited: no call is in flight when
it dies. Call it before `ray.shutdown()`.
"""

from __future__ import annotations

import time
from typing import Any

SERVE_STOP_TIMEOUT_S = 30.0
"""How long to wait for the controller to delete every app and exit (Serve's own shutdown waits as long)."""
SERVE_STOP_POLL_S = 0.25


def stop_serve(timeout_s: float = SERVE_STOP_TIMEOUT_S) -> bool:
    """Ask Serve's controller to shut down and wait until it has exited; True when it did within `timeout_s`.

    True at once when no Serve runs on the cluster. Ray must be initialized.
    """
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    def controller() -> Any | None:
        try:
            return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # no such live actor
            return None

    deadline = time.monotonic() + timeout_s
    handle = controller()
    if handle is None:
        return True
    try:
        ray.get(handle.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    except ray.exceptions.RayActorError:
        return True  # it died on its own meanwhile
    except ray.exceptions.GetTimeoutError:
        return False
    while controller() is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(SERVE_STOP_POLL_S)
    return True
