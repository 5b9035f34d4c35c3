"""The built-in offline demo model: a small Llama with seeded random weights.

It lets the whole system (cache, serving, benchmarks) run where no model hub
is reachable. Its outputs are meaningless text, but they are deterministic and
its KV has the shape and numerics of a real Llama, which is what the cache
needs. The tokenizer is byte-level (every UTF-8 byte is one token), built as a
Hugging Face fast tokenizer so the demo and a real model share one code path,
and so the demo can be exported as a plain Hugging Face folder that other
servers (vLLM, llama.cpp) load for like-for-like comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEMO_MODEL_ID = "blatam-demo-llama-24m"

UNK, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3  # token id of byte 0x00


@dataclass(frozen=True, slots=True)
class DemoModelSpec:
    """Sizes of the demo model (defaults: 23.7 M parameters, 16 KiB of fp32 KV per token)."""

    vocab_size: int = 512
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 4096
    seed: int = 0


#: A much smaller model for fast unit tests (same architecture and tokenizer).
TINY_SPEC = DemoModelSpec(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024,
)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what `decoders.ByteLevel` reverses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return alphabet


def build_demo_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ``<unk> <s> </s>`` then one token per byte value.

    Bytes are spelled as GPT-2's byte-level alphabet, so decoding replaces
    only the bytes that are not valid UTF-8: the text of a prefix of the ids
    is a prefix of the text of all of them (except an unfinished last
    character), which streaming relies on. (A byte-fallback decoder turns a
    whole run of byte tokens into U+FFFD as soon as one byte is invalid.)
    """
    alphabet = _byte_alphabet()
    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}
    for byte in range(256):
        vocab[alphabet[byte]] = BYTE_OFFSET + byte
    # A BPE with no merges over the byte alphabet maps every character to its UTF-8 bytes.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.add_bos_token = True
    # Documented simple chat template for the demo model (a real model uses its own).
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


def build_demo_model(spec: DemoModelSpec = DemoModelSpec(), dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Llama with weights drawn from a fixed seed: identical in every process."""
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=UNK,
        tie_word_embeddings=False,
    )
    # Seed a private generator state so building the model never disturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model = model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def export_demo_model(path: str | Path, spec: DemoModelSpec = DemoModelSpec()) -> Path:
    """Write the demo model as a Hugging Face folder (config, safetensors, tokenizer)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    build_demo_model(spec).save_pretrained(out, safe_serialization=True)
    build_demo_tokenizer().save_pretrained(out)
    return out
