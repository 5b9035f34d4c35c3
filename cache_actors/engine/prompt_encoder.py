"""Prompt text to token ids, without the model.

The model runner, the LLM ingress and the cache-aware router must all turn a
prompt (or a chat) into the same token ids: the router hashes them to find
which replica holds the prefix, so a different rendering there would make
every affinity decision wrong. Keeping it apart from the runner lets the
router load only a tokenizer (milliseconds, no weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import AutoTokenizer

from cache_actors.engine.demo_model import build_demo_tokenizer


def hf_model_folder(model_path: str) -> Path:
    """``model_path`` as a local Hugging Face model folder; ValueError if it is not one.

    A catalogue name (``smollm2``) names the folder `blatam model pull`
    installed under this node's data dir, so a deploy file can say
    ``model_path: smollm2`` on every node alike.
    """
    path = Path(model_path)
    if (path / "config.json").is_file():
        return path
    from cache_actors.engine.model_store import CATALOG, ModelPullError, models_root, resolve_model

    if model_path in CATALOG:
        try:
            return Path(str(resolve_model(model_path, models_root())))
        except ModelPullError as exc:
            raise ValueError(f"model_path {model_path!r}: {exc}") from None
    raise ValueError(f"model_path {model_path!r} is not a Hugging Face model folder (no config.json)")


def load_tokenizer(model_path: str | None) -> Any:
    """The tokenizer of the model in ``model_path`` (a local Hugging Face folder), or the demo one."""
    if model_path is None:
        return build_demo_tokenizer()
    return AutoTokenizer.from_pretrained(hf_model_folder(model_path), local_files_only=True)


class PromptEncoder:
    """Renders and tokenizes prompts and chats the way the model expects."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model_path: str | None) -> "PromptEncoder":
        return cls(load_tokenizer(model_path))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt, with the model's special tokens (BOS) unless told otherwise."""
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The chat as text through the tokenizer's own template (ValueError if it has none)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use a completion prompt instead")
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat; BOS is added only if the template did not write it."""
        rendered = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        bos = self.tokenizer.bos_token or "\0"
        return list(self.tokenizer(rendered, add_special_tokens=not rendered.startswith(bos))["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
