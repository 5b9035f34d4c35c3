"""oneDNN-packed linears: the same function as ``nn.Linear``, on every path a runner takes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cache_actors.engine.demo_model import TINY_SPEC, build_demo_model
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.packed_linear import PackedLinear, pack_linears, packing_supported

pytestmark = pytest.mark.skipif(not packing_supported(torch.device("cpu"), torch.float32),
                                reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (16, 96), (3, 7, 96)])
def test_packed_linear_computes_what_linear_does(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        got, want = PackedLinear(linear)(x), linear(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_strided_input_is_read_as_its_values() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(32, 8)
    x = torch.randn(10, 64)[:, ::2]
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


def test_a_packed_model_gives_the_same_logits_and_greedy_tokens() -> None:
    plain = build_demo_model(TINY_SPEC, torch.float32).eval()
    packed = copy.deepcopy(plain)
    replaced = pack_linears(packed)
    linears = sum(type(m) is nn.Linear for m in plain.modules())
    assert replaced == linears > 0
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.randint(3, TINY_SPEC.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want, got = plain(input_ids=ids).logits, packed(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_the_runner_packs_by_default_and_can_be_told_not_to() -> None:
    packed = ModelRunner.load(None, demo_spec=TINY_SPEC)
    plain = ModelRunner.load(None, demo_spec=TINY_SPEC, packed_weights=False)
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    prompt = plain.encode("packed weights decode the same tokens")
    logits_a, _ = packed.prefill(prompt)
    logits_b, _ = plain.prefill(prompt)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-4)


def test_unsupported_dtypes_and_devices_are_left_alone() -> None:
    model = build_demo_model(TINY_SPEC, torch.float16)
    assert pack_linears(model) == 0
    assert any(type(m) is nn.Linear for m in model.modules())
    assert not packing_supported(torch.device("meta"), torch.float32)
