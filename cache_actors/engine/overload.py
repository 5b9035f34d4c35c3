"""The batcher's "busy, retry later" error, in a module that imports nothing.

It crosses Serve handles (a replica raises it, its caller unpickles it): a
caller such as the gateway, which maps it to 503 without running a model,
must be able to load the class without importing torch.
"""


class BatcherOverloaded(RuntimeError):
    """The waiting queue is full; the caller should retry later (HTTP 503)."""
