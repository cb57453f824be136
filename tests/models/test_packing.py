"""Packed convolutions: the same answers as the plain model, at any size, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.attention_net import AttentionNet, channels_last
from models.packing import PackedConv2d, can_pack, pack_convolutions
from tests.models.test_attention_net import pad_batch, trained_like_model

pytestmark = pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN fused convolution")

SIZES = [(60, 60), (100, 100), (37, 81), (16, 17), (129, 64)]


def fused_pair(seed: int = 0) -> tuple[AttentionNet, AttentionNet]:
    plain = channels_last(trained_like_model(seed).fuse_for_inference())
    return plain, copy.deepcopy(plain)


def images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch, sizes = pad_batch([torch.randn(1, h, w, generator=generator) for h, w in SIZES])
    return batch.contiguous(memory_format=torch.channels_last), sizes


@pytest.mark.bfloat16
@torch.inference_mode()
def test_packed_bfloat16_is_bitwise_the_plain_model_under_autocast() -> None:
    plain, packed = fused_pair()
    pack_convolutions(packed, torch.bfloat16)
    batch, sizes = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for inputs in [(batch, sizes), (batch[:1, :, :60, :60], None), (batch[1:2], None)]:
            expected, actual = plain(*inputs), packed(*inputs)
            assert torch.equal(actual.logits, expected.logits)
            assert torch.equal(actual.attention, expected.attention)
            assert torch.equal(actual.features, expected.features)


@torch.inference_mode()
def test_packed_float32_matches_the_plain_model() -> None:
    plain, packed = fused_pair(seed=3)
    pack_convolutions(packed, torch.float32)
    batch, sizes = images(seed=4)
    expected, actual = plain(batch, sizes), packed(batch, sizes)
    assert actual.logits.dtype == torch.float32
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.attention, expected.attention, atol=1e-5, rtol=1e-4)


@torch.inference_mode()
def test_every_convolution_is_packed_with_its_relu_fused() -> None:
    _, packed = fused_pair()
    pack_convolutions(packed, torch.bfloat16)
    convolutions = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    assert len(convolutions) == len(packed.config.stages) + 2
    assert not any(isinstance(m, nn.Conv2d | nn.ReLU) for m in packed.modules())
    # Every backbone layer and the head's first convolution end in a ReLU; the scoring one does not.
    assert [m.attribute for m in convolutions] == ["relu"] * (len(convolutions) - 1) + ["none"]


def test_packing_an_unfused_or_packed_model_is_refused() -> None:
    with pytest.raises(ValueError, match="after fuse_for_inference"):
        pack_convolutions(trained_like_model(), torch.bfloat16)
    _, packed = fused_pair()
    pack_convolutions(packed, torch.bfloat16)
    with pytest.raises(ValueError, match="only once"):
        pack_convolutions(packed, torch.bfloat16)


@torch.inference_mode()
def test_weights_are_packed_once_per_input_shape_and_the_least_recent_shape_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("models.packing.MAX_PACKED_SHAPES", 2)
    torch.manual_seed(5)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    packed = PackedConv2d(conv, torch.float32, relu=True)
    shapes = [(1, 8, 20, 20), (4, 8, 20, 20), (1, 8, 20, 20), (2, 8, 33, 17), (4, 8, 20, 20)]
    for shape in shapes:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(packed(x), torch.relu(conv(x)), atol=1e-5, rtol=1e-4)
    # (1, 20, 20) was used again after (4, 20, 20), so the third shape evicted (4, 20, 20) and the
    # last call packed it anew, evicting (1, 20, 20).
    assert list(packed.packed) == [(2, 8, 33, 17), (4, 8, 20, 20)]


def test_a_wrapped_network_is_packed_and_a_model_without_one_is_refused() -> None:
    _, network = fused_pair()
    wrapper = nn.Sequential(network)
    assert pack_convolutions(wrapper, torch.bfloat16) is wrapper
    assert any(isinstance(m, PackedConv2d) for m in network.modules())
    with pytest.raises(ValueError, match="no AttentionNet in Linear"):
        pack_convolutions(nn.Linear(2, 2), torch.bfloat16)
