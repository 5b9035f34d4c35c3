"""Persist and load the whole cluster's KV cache: each shard writes and reads its own part; one manifest covers all.

Layout of a set: ``DIR/part-000/``, ``DIR/part-001/``, ... (each a persisted
cache in `cache_actors.core.persistence`'s format, written by its shard)
and ``DIR/cluster.json``: which shard wrote each part, its model
fingerprint, block count and the SHA-256 of the part's manifest (whose file
checksum in turn covers the tensors). ``cluster.json`` is removed first and
written last, so an interrupted persist leaves no set that would load.

Loading checks everything before anything changes: the cluster manifest,
each part's manifest digest, then every part verified by the shard that will
load it (model, codec, sizes, every block's checksum). Only when all pass do
the shards insert. A part goes to the shard on the same node and device when
it still runs, else to another shard of the same model.

The shards write and read ``DIR`` themselves, so on a cluster of several
nodes it must be a folder every node sees at the same path (a shared volume).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from cache_actors.actors.cluster_admin import gather_calls, shard_names
from cache_actors.actors.spec import NAMESPACE, parse_shard_name
from cache_actors.core.persistence import MANIFEST, PersistenceError, file_sha256, read_versioned_json

CLUSTER_MANIFEST = "cluster.json"
FORMAT_NAME = "blatam-kv-cluster"
FORMAT_VERSION = 1
PART_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class PartOutcome:
    part: str
    shard: str
    ok: bool
    blocks: int = 0
    note: str = ""


def persist_cluster(directory: str | Path, *, on_part: Callable[[str], None] | None = None,
                    timeout_s: float = PART_TIMEOUT_S) -> list[PartOutcome]:
    """Every shard writes its blocks under `directory`; `cluster.json` is written only when all succeeded."""
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / CLUSTER_MANIFEST).unlink(missing_ok=True)
    parts = {f"part-{i:03d}": name for i, name in enumerate(shard_names())}
    calls = {part: ray.get_actor(name, namespace=NAMESPACE).persist.remote(str(root / part))
             for part, name in parts.items()}
    answers = gather_calls(calls, timeout_s, on_part)
    outcomes = [PartOutcome(part, name, answers[part][0] is not None,
                            answers[part][0]["blocks"] if answers[part][0] else 0, answers[part][1])
                for part, name in parts.items()]
    if outcomes and all(o.ok for o in outcomes):
        entries = []
        for part, name in parts.items():
            fingerprint, node_id, device = parse_shard_name(name) or ("", "", "")
            entries.append({"dir": part, "shard": name, "fingerprint": fingerprint, "node_id": node_id,
                            "device": device, "blocks": answers[part][0]["blocks"],
                            "manifest_sha256": answers[part][0]["manifest_sha256"]})
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": entries}
        staging = root / f".{CLUSTER_MANIFEST}.{os.getpid()}"
        staging.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(staging, root / CLUSTER_MANIFEST)
    return outcomes


def read_cluster_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """The parts of the set at `directory`, each part's manifest digest checked; `PersistenceError` otherwise."""
    root = Path(directory).resolve()
    path = root / CLUSTER_MANIFEST
    manifest = read_versioned_json(path, FORMAT_NAME, FORMAT_VERSION,
                                   "not a persisted cluster cache (or an interrupted one)")
    parts = manifest.get("parts")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise PersistenceError(f"{path}: no list of parts")
    for part in parts:
        name = str(part.get("dir", ""))
        if not name.startswith("part-") or "/" in name or name in (".", ".."):
            raise PersistenceError(f"{path}: part {name!r} is not a part folder of this set")
        part_manifest = root / name / MANIFEST
        if not part_manifest.is_file():
            raise PersistenceError(f"{root / name}: missing")
        if file_sha256(part_manifest) != part.get("manifest_sha256"):
            raise PersistenceError(f"{part_manifest}: does not match {CLUSTER_MANIFEST} (changed or damaged)")
    return parts


def _assign(parts: list[dict[str, Any]], shards: list[str]) -> dict[str, str]:
    """part dir -> shard name: the same node and device when it runs, else a shard of the same model in turn."""
    by_place = {parse_shard_name(s)[1:]: s for s in shards if parse_shard_name(s)}  # type: ignore[index]
    same_model: dict[str, list[str]] = {}
    for shard in shards:
        parsed = parse_shard_name(shard)
        if parsed:
            same_model.setdefault(parsed[0], []).append(shard)
    assigned = {}
    turn: dict[str, int] = {}
    for part in parts:
        exact = by_place.get((part.get("node_id"), part.get("device")))
        if exact is not None and parse_shard_name(exact)[0] == part.get("fingerprint"):  # type: ignore[index]
            assigned[part["dir"]] = exact
            continue
        candidates = same_model.get(str(part.get("fingerprint")), [])
        if not candidates:
            raise PersistenceError(f"part {part['dir']}: no running shard of its model (fingerprint "
                                   f"{part.get('fingerprint')!r}); start the LLM app first")
        i = turn.get(part["fingerprint"], 0)
        assigned[part["dir"]] = candidates[i % len(candidates)]
        turn[part["fingerprint"]] = i + 1
    return assigned


def load_cluster(directory: str | Path, *, on_part: Callable[[str], None] | None = None,
                 on_phase: Callable[[str], None] | None = None, timeout_s: float = PART_TIMEOUT_S) -> list[PartOutcome]:
    """Verify every part, then (only if all pass) load each into its shard. `PersistenceError` for a set that is
    not one; outcomes that are not ok for a part that fails (nothing loaded when any fails the check)."""
    root = Path(directory).resolve()
    parts = read_cluster_manifest(root)
    assigned = _assign(parts, shard_names())

    def handle(part: str) -> Any:
        return ray.get_actor(assigned[part], namespace=NAMESPACE)

    if on_phase:
        on_phase("verify")
    checked = gather_calls({p: handle(p).verify_persisted.remote(str(root / p)) for p in assigned}, timeout_s, on_part)
    if not all(result is not None for result, _ in checked.values()):
        return [PartOutcome(p, assigned[p], False, 0, checked[p][1] or "verified, not loaded: another part failed")
                for p in assigned]
    if on_phase:
        on_phase("load")
    loaded = gather_calls({p: handle(p).load_persisted.remote(str(root / p)) for p in assigned}, timeout_s, on_part)
    return [PartOutcome(p, assigned[p], loaded[p][0] is not None, loaded[p][0] or 0, loaded[p][1]) for p in assigned]
