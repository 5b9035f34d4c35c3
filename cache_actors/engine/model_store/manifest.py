"""`blatam-model.json`: the provenance of an installed model folder, and the mark of a complete install.

The manifest is written last, before the folder is renamed into place, so a
folder with a readable manifest whose listed files are all there at their
recorded sizes is a complete install. Hashes are recorded for audits and
the real-model tests; checking them on every start would read hundreds of MB.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cache_actors.engine.model_store.catalog import CatalogEntry
from cache_actors.engine.model_store.digest import sha256_file
from cache_actors.engine.model_store.progress import STEP_MANIFEST, NullProgress, PullProgress

MANIFEST_NAME = "blatam-model.json"
MANIFEST_FORMAT = 1


def build_manifest(entry: CatalogEntry, folder: Path, *, dtype: str, wheel_sha256: str, gguf_sha256: str,
                   model: dict[str, Any], progress: PullProgress | None = None) -> dict[str, Any]:
    """The manifest for a freshly converted `folder`: where it came from, with what, and its files' hashes."""
    progress = progress or NullProgress()
    weights = sorted(folder.glob("*.safetensors"))
    progress.start(STEP_MANIFEST, sum(p.stat().st_size for p in weights))
    files = {p.name: {"sha256": sha256_file(p, progress), "bytes": p.stat().st_size} for p in weights}
    progress.finish()
    return {
        "format": MANIFEST_FORMAT,
        "name": entry.name,
        "model_id": folder.name,
        "package": entry.package,
        "version": entry.version,
        "wheel_filename": entry.wheel_filename,
        "wheel_sha256": wheel_sha256,
        "gguf_member": entry.gguf_member,
        "gguf_sha256": gguf_sha256,
        "license": entry.license,
        "upstream": entry.upstream,
        "dtype": dtype,
        "model": model,
        "versions": {package: _version(package) for package in ("transformers", "gguf", "torch", "safetensors")},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when there is none or it is not a JSON object."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def install_problem(folder: Path, *, name: str | None = None, dtype: str | None = None) -> str | None:
    """Why `folder` is not a complete install (of `name` in `dtype`, when given); None when it is."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{folder} has no readable {MANIFEST_NAME}"
    for key, wanted in (("name", name), ("dtype", dtype)):
        if wanted is not None and manifest.get(key) != wanted:
            return f"{folder} holds {key} {manifest.get(key)!r}, not {wanted!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{folder}/{MANIFEST_NAME} lists no weight files"
    for filename, recorded in files.items():
        path = folder / filename
        if not path.is_file() or path.stat().st_size != recorded.get("bytes"):
            return f"{path} is missing or not the size its manifest records"
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json"
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
