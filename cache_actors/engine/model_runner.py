"""Runs a causal LM: prefill on top of a reused prefix, then one token at a time.

The runner knows nothing about blocks or policies; it takes a prefix as a
`DynamicCache` and returns the model's cache after the prefill so the caller
can store what is new. Any Hugging Face causal LM whose cache is all
full-attention layers works; sliding-window/hybrid models run without reuse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from cache_actors.engine.gqa_attention import use_gqa_sdpa
from cache_actors.engine.attention_kernel import AttentionKernel
from cache_actors.engine.pointwise_kernel import PointwiseKernels
from cache_actors.engine.fused_pointwise import CompiledPointwise, check_kernels
from cache_actors.engine.lean_llama import LeanLlama, fuse_projections, lean_unsupported
from cache_actors.engine.onednn_caches import bound_primitive_caches
from cache_actors.engine.packed_linear import pack_linears
from cache_actors.engine.demo_model import DEMO_MODEL_ID, DemoModelSpec, build_demo_model, build_demo_tokenizer
from cache_actors.engine.prompt_encoder import PromptEncoder, hf_model_folder, load_tokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class KVGeometry:
    """Shape of the model's KV per token (what a block must hold)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def layout(self) -> str:
        return f"L{self.num_layers}H{self.num_kv_heads}D{self.head_dim}"

    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


def end_token_ids(model: PreTrainedModel, tokenizer: Any) -> tuple[int, ...]:
    """Every id that ends a turn: the config's, the generation config's and the tokenizer's EOS.

    They disagree in real checkpoints (a chat model's turn ends with
    ``<|im_end|>`` in ``generation_config.json`` while ``config.json`` names
    ``<|endoftext|>``), and stopping on only one of them runs past the answer.
    """
    found: list[int] = []
    sources = (model.config.get_text_config(decoder=True), getattr(model, "generation_config", None), tokenizer)
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(token, int) and token >= 0 and token not in found:
                found.append(token)
    return tuple(found)


def resolve_dtype(dtype: str, device: str = "cpu") -> torch.dtype:
    """The compute dtype; ``auto`` is bf16 only where the hardware makes it faster than fp32.

    Measured on an AVX512-BF16 CPU without AMX (2 threads, SmolLM2-135M): bf16
    prefilled 1,024 tokens 1.5x slower and decoded 1.1x slower than fp32, so
    on CPU ``auto`` takes bf16 only with AMX tiles; on CUDA when the GPU
    supports bf16.
    """
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_amx() else torch.float32


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles (fast bf16 matrix multiply)."""
    try:
        return "amx" in torch.backends.cpu.get_cpu_capability().lower() or _cpuinfo_has("amx_bf16")
    except (AttributeError, RuntimeError):
        return False


def _cpuinfo_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and flag in line.split() for line in info)
    except OSError:
        return False


def model_id_for(model_path: str | None, demo_spec: DemoModelSpec | None = None) -> str:
    """The model's id: the demo model's sizes and seed, or the Hugging Face folder's name."""
    if model_path is None:
        spec = demo_spec or DemoModelSpec()
        return f"{DEMO_MODEL_ID}-s{spec.seed}-{spec.hidden_size}x{spec.num_hidden_layers}"
    return hf_model_folder(model_path).resolve().name


def model_identity(model_path: str | None, demo_spec: DemoModelSpec | None = None) -> tuple[str, int]:
    """``(model id, context length)`` of a model without loading its weights.

    The LLM ingress answers ``/v1/models`` and checks context lengths with
    this; it must name the model exactly as the runner of a replica does.
    """
    if model_path is None:
        return model_id_for(None, demo_spec), (demo_spec or DemoModelSpec()).max_position_embeddings
    config = AutoConfig.from_pretrained(hf_model_folder(model_path), local_files_only=True).get_text_config(decoder=True)
    return model_id_for(model_path), int(getattr(config, "max_position_embeddings", 2048))


class ModelRunner:
    """A loaded model and tokenizer, with prefix-aware prefill."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, *, model_id: str, lean: LeanLlama | None = None) -> None:
        self.model = model
        # What every forward of the engine calls: the lean loop where it covers the model, else the model itself.
        self.forward: Callable[..., Any] = lean if lean is not None else model
        self.tokenizer = tokenizer
        self.prompts = PromptEncoder(tokenizer)
        self.model_id = model_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config(decoder=True)
        self.max_context = int(getattr(config, "max_position_embeddings", 2048))
        self.vocab_size = int(config.vocab_size)
        self.eos_token_ids = end_token_ids(model, tokenizer)
        self.geometry, self.supports_prefix_reuse = self._probe_cache()

    @property
    def lean(self) -> bool:
        """Whether forwards run the lean loop (`cache_actors.engine.lean_llama`) rather than Transformers'."""
        return self.forward is not self.model

    # --- construction ---------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_path: str | None,
        *,
        dtype: str = "float32",
        demo_spec: DemoModelSpec | None = None,
        device: str = "cpu",
        packed_weights: bool = True,
        lean: bool = True,
        fused_pointwise: bool = False,
        attention_kernel: bool = False,
    ) -> "ModelRunner":
        """The model in ``model_path`` (a local Hugging Face folder), or the demo model.

        ``packed_weights``: on CPU, linear layers run on oneDNN-packed weights
        (`cache_actors.engine.packed_linear`: about twice as fast per decode step).
        Attention shares grouped KV heads in place (`cache_actors.engine.gqa_attention`).
        ``lean``: a Llama on CPU runs `cache_actors.engine.lean_llama.LeanLlama`
        (same logits, a third less time per decode step); False keeps Transformers' forward.
        ``fused_pointwise``: the lean forward runs a wide prefill's elementwise steps as compiled kernels
        (`cache_actors.engine.fused_pointwise`; compiled here, a few seconds; off where they cannot be), and a
        narrower forward's (decode steps) as C++ loops (`cache_actors.engine.pointwise_kernel`, likewise).
        ``attention_kernel``: the lean forward's prefills and decode steps attend with our kernel
        (`cache_actors.engine.attention_kernel`; built and checked here, ~30 s once per machine; off where it cannot be).
        """
        bound_primitive_caches()  # before this process's first oneDNN call, or they keep 1,024 shapes each
        torch_dtype = resolve_dtype(dtype, device)
        if model_path is None:
            spec = demo_spec or DemoModelSpec()
            model = build_demo_model(spec, torch_dtype).to(device)
            tokenizer, model_id, path = build_demo_tokenizer(), model_id_for(None, spec), "the demo spec"
        else:
            path = hf_model_folder(model_path)
            tokenizer = load_tokenizer(model_path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True).to(device)
            model_id = model_id_for(model_path)
        model.eval()
        model.requires_grad_(False)
        use_gqa_sdpa(model)
        unsupported = lean_unsupported(model) if lean else "turned off"
        fused = fuse_projections(model, pack=packed_weights) if unsupported is None else None
        packed = pack_linears(model) if packed_weights else 0
        lean_forward = LeanLlama(model, fused) if fused is not None else None
        runner = cls(model, tokenizer, model_id=model_id, lean=lean_forward)
        if lean_forward is not None and attention_kernel:
            lean_forward.attention = AttentionKernel.build(runner.dtype, runner.device, lean_forward.head_dim)
        kernels = None
        if lean_forward is not None and fused_pointwise:
            kernels = runner._fuse_pointwise()
            lean_forward.narrow_pointwise = PointwiseKernels.build(runner.dtype, runner.device)
        logger.info("loaded %s from %s: %s, context %d, end tokens %s, torch threads %d, %d packed linear layers, "
                    "lean forward %s, fused pointwise kernels %s (narrow %s), attention kernel %s", runner.model_id, path,
                    str(runner.dtype).removeprefix("torch."), runner.max_context, list(runner.eos_token_ids),
                    torch.get_num_threads(), packed, "on" if fused is not None else f"off ({unsupported})",
                    "on" if kernels is not None else "off",
                    "on" if lean_forward is not None and lean_forward.narrow_pointwise is not None else "off",
                    "on" if lean_forward is not None and lean_forward.attention is not None else "off")
        return runner

    def _fuse_pointwise(self) -> CompiledPointwise | None:
        """Switch the lean forward's wide prefills to compiled kernels, once they are compiled and checked here."""
        lean = self.forward
        kernels = CompiledPointwise.build(dtype=self.dtype, device=self.device)
        if kernels is None:
            return None

        def use(on: bool) -> None:
            lean.pointwise = kernels if on else None

        def logits(ids: torch.Tensor) -> torch.Tensor:
            return lean(input_ids=ids.to(self.device), cache=DynamicCache(), logits_to_keep=1).logits

        return kernels if check_kernels(logits, use, self.vocab_size) else None

    @torch.inference_mode()
    def _probe_cache(self) -> tuple[KVGeometry, bool]:
        """Run one token to learn the KV geometry and whether prefixes can be reused."""
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else 0
        out = self.model(input_ids=torch.tensor([[bos]], device=self.device), cache=DynamicCache(), use_cache=True)
        layers = out.cache.layers
        keys = layers[0].keys
        geometry = KVGeometry(len(layers), int(keys.shape[1]), int(keys.shape[3]), keys.dtype)
        plain = all(type(layer) is DynamicLayer for layer in layers) and all(
            layer.keys.shape == keys.shape for layer in layers
        )
        if not plain:
            logger.warning("model %s has sliding-window or heterogeneous KV layers: prefix reuse is off", self.model_id)
        return geometry, plain

    # --- text ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the model's special tokens (BOS)."""
        return self.prompts.encode(text)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat rendered with the tokenizer's own template."""
        return self.prompts.encode_chat(messages)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.prompts.decode(token_ids)

    # --- compute ---------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int], prefix: DynamicCache | None = None) -> tuple[torch.Tensor, DynamicCache]:
        """Run the tokens after ``prefix`` and return the last logits and the full cache."""
        cache = prefix if prefix is not None else DynamicCache()
        done = cache.get_seq_length()
        if done >= len(token_ids):
            raise ValueError("prefill needs at least one token after the cached prefix")
        input_ids = torch.tensor([list(token_ids[done:])], dtype=torch.long, device=self.device)
        out = self.forward(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache

    @torch.inference_mode()
    def step(self, token_id: int, cache: DynamicCache) -> torch.Tensor:
        """Feed one generated token; return the next logits (the cache grows in place)."""
        input_ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        out = self.forward(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]
