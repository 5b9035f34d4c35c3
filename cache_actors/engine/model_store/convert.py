"""GGUF -> plain Hugging Face folder (safetensors weights, tokenizer, configs).

The engine loads models with `from_pretrained(folder)`; keeping GGUF blocks
would tie it to GGUF kernels, so the weights are de-quantized once, at pull
time, into float32 or bfloat16 safetensors. The GGUF metadata does not say
which tokens end a chat turn as opposed to a document, so every end token the
catalogue names is written into config.json and generation_config.json
`eos_token_id`: an engine reading either stops at `<|im_end|>`.

Imports torch and transformers at module load: import this module only when converting.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from cache_actors.engine.model_store.catalog import check_dtype
from cache_actors.engine.model_store.errors import ModelPullError
from cache_actors.engine.model_store.progress import STEP_CONVERT, STEP_SAVE, NullProgress, PullProgress

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_NEEDED_PACKAGES = ("gguf", "accelerate")


@dataclass(frozen=True, slots=True)
class ConversionReport:
    """What the saved folder says about the model (also recorded in the manifest)."""

    dtype: str
    architecture: str
    parameters: int
    context_length: int | None
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]
    """Every id that ends generation, the tokenizer's EOS first."""
    convert_seconds: float
    """De-quantizing the GGUF and building the tokenizer (the save is not counted)."""

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "architecture": self.architecture, "parameters": self.parameters,
                "context_length": self.context_length, "tie_word_embeddings": self.tie_word_embeddings,
                "eos_token_ids": list(self.eos_token_ids), "convert_seconds": round(self.convert_seconds, 2)}


def convert_gguf(gguf_path: Path, dest: Path, *, dtype: str = "float32", end_tokens: tuple[str, ...] = (),
                 progress: PullProgress | None = None) -> ConversionReport:
    """De-quantize `gguf_path` into a Hugging Face folder at `dest` (which must exist and be empty).

    Steps reported: `convert` (tokenizer, weights) and `save` (weights,
    tokenizer, end tokens, check). Raises `ModelPullError` when a needed
    package is missing, an end token is not in the vocabulary, or the saved
    folder lacks the chat template or an end token.
    """
    progress = progress or NullProgress()
    torch_dtype = TORCH_DTYPES[check_dtype(dtype)]
    _require_packages()
    started = time.perf_counter()
    progress.start(STEP_CONVERT, 2, "steps")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    progress.advance(1)
    model = _load_dequantized(gguf_path, torch_dtype)
    progress.advance(1)
    progress.finish()
    convert_seconds = time.perf_counter() - started

    eos_ids = end_token_ids(tokenizer, model.config.eos_token_id, end_tokens)
    progress.start(STEP_SAVE, 4, "steps")
    model.config.eos_token_id = list(eos_ids)
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=list(eos_ids),
                                               pad_token_id=model.config.pad_token_id)
    model.save_pretrained(dest)
    progress.advance(1)
    context_length = getattr(model.config, "max_position_embeddings", None)
    if context_length:  # the GGUF tokenizer says 1e30; the model's context is the real bound
        tokenizer.model_max_length = context_length
    tokenizer.init_kwargs.pop("local_files_only", None)  # a load option, not a property of the tokenizer
    tokenizer.save_pretrained(dest)
    progress.advance(1)
    check_saved_folder(dest, eos_ids, turn_end=end_tokens[0] if end_tokens else None)
    progress.advance(1)
    report = ConversionReport(
        dtype=dtype, architecture=type(model).__name__, parameters=sum(p.numel() for p in model.parameters()),
        context_length=context_length, tie_word_embeddings=bool(getattr(model.config, "tie_word_embeddings", False)),
        eos_token_ids=eos_ids, convert_seconds=convert_seconds)
    progress.advance(1)
    progress.finish()
    logger.info("converted %s to %s in %.1f s: %s", gguf_path.name, dtype, convert_seconds, report)
    return report


def end_token_ids(tokenizer: Any, config_eos: int | list[int] | None, end_tokens: tuple[str, ...]) -> tuple[int, ...]:
    """The tokenizer's EOS, the config's EOS ids and each of `end_tokens`, once each, in that order."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    ids.extend(int(i) for i in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
               if i is not None)
    vocab = tokenizer.get_vocab()
    for token in end_tokens:
        if token not in vocab:  # NOTE: convert_tokens_to_ids would answer the unknown token's id, silently
            raise ModelPullError(f"end token {token!r} is not in the model's vocabulary; the catalogue entry is wrong")
        ids.append(int(vocab[token]))
    return tuple(dict.fromkeys(ids))


def check_saved_folder(folder: Path, eos_ids: tuple[int, ...], *, turn_end: str | None) -> None:
    """Reload what was saved, the way the engine will: the chat template and every end id must be there."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not tokenizer.chat_template:
        raise ModelPullError(f"the saved tokenizer in {folder.name} has no chat template")
    if turn_end is not None and turn_end not in tokenizer.chat_template:
        raise ModelPullError(f"the chat template in {folder.name} never ends a turn with {turn_end}")
    for name in ("config.json", "generation_config.json"):
        saved = json.loads((folder / name).read_text()).get("eos_token_id")
        saved_ids = set(saved if isinstance(saved, list) else [saved])
        if not set(eos_ids) <= saved_ids:
            raise ModelPullError(f"{folder.name}/{name} has eos_token_id {saved}, expected all of {list(eos_ids)}")


def _load_dequantized(gguf_path: Path, torch_dtype: torch.dtype) -> Any:
    """The GGUF's model with plain dense weights in `torch_dtype`.

    NOTE: transformers >= 5.2x keeps GGUF weights packed when the `kernels`
    package is installed, and such a model cannot be saved; `GgufConfig(dequantize=True)`
    asks for dense weights. Older releases without `GgufConfig` always de-quantize.
    """
    kwargs: dict[str, Any] = {}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch_dtype,
                                                 local_files_only=True, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        raise ModelPullError(f"transformers {transformers.__version__} kept {gguf_path.name}'s weights quantized; "
                             f"they cannot be saved as a plain folder")
    model.eval()
    return model


def _require_packages() -> None:
    missing = [name for name in _NEEDED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelPullError(f"reading a GGUF needs the {' and '.join(missing)} package(s): "
                             f"pip install 'gguf>=0.10' 'accelerate>=1.0'")
