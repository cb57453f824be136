"""The attention network: padding invariance, the evidence decomposition, folding and map alignment."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention_net import (
    CACHED_MATRIX_MAX_PIXELS,
    SEPARABLE_MAX_PIXELS,
    AttentionNet,
    AttentionNetConfig,
    _cached_interpolation_matrix,
    input_sample_grid,
    upsample_to_input,
)


def trained_like_model(seed: int = 0) -> AttentionNet:
    """A random model whose batch norms have non-trivial statistics, in eval mode."""
    torch.manual_seed(seed)
    model = AttentionNet(AttentionNetConfig())
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 48, 48))
        last = model.attention_head[-1]
        assert isinstance(last, torch.nn.Conv2d)
        last.weight.normal_(std=0.5)
    return model.eval()


def pad_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    height = max(i.shape[-2] for i in images)
    width = max(i.shape[-1] for i in images)
    batch = torch.stack([F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2])) for i in images])
    sizes = torch.tensor([list(i.shape[-2:]) for i in images])
    return batch, sizes


@torch.no_grad()
def test_padded_batch_equals_single_images() -> None:
    model = trained_like_model()
    torch.manual_seed(1)
    images = [torch.randn(1, h, w) for h, w in [(60, 60), (37, 81), (100, 100), (16, 17), (63, 29)]]
    batch, sizes = pad_batch(images)
    batched = model(batch, sizes)
    for index, image in enumerate(images):
        single = model(image.unsqueeze(0))
        vh, vw = (int(v) for v in batched.valid_size[index])
        assert (vh, vw) == tuple(single.attention.shape[-2:])
        torch.testing.assert_close(batched.logits[index], single.logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            batched.attention[index, :vh, :vw], single.attention[0], atol=1e-5, rtol=1e-4
        )
        assert float(batched.attention[index].sum()) == pytest.approx(1.0, abs=1e-5)
        assert (
            float(batched.attention[index, vh:, :].abs().sum() + batched.attention[index, :, vw:].abs().sum())
            == 0
        )


@torch.no_grad()
def test_evidence_maps_sum_to_logits_minus_bias() -> None:
    model = trained_like_model()
    output = model(torch.randn(4, 1, 60, 60))
    bias = model.classifier.bias
    for target in range(10):
        evidence = output.evidence(torch.full((4,), target))
        torch.testing.assert_close(
            evidence.sum((1, 2)), output.logits[:, target] - bias[target], atol=1e-4, rtol=1e-4
        )


@torch.no_grad()
def test_folding_batch_norm_keeps_outputs() -> None:
    model = trained_like_model()
    x = torch.randn(3, 1, 64, 52)
    before = model(x)
    model.fuse_for_inference()
    after = model(x)
    assert all(isinstance(layer.bn, torch.nn.Identity) for layer in model.backbone)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after.attention, before.attention, atol=1e-5, rtol=1e-4)


def test_rejects_inputs_below_the_minimum_size() -> None:
    model = trained_like_model()
    with pytest.raises(ValueError, match="minimum is 16×16"):
        model(torch.randn(1, 1, 15, 40))


def test_upsampled_peak_lands_on_the_cell_centre() -> None:
    stride = AttentionNetConfig().feature_stride
    grid = torch.zeros(1, 15, 15)
    grid[0, 6, 9] = 1.0
    image = upsample_to_input(grid, 60, 60, stride)
    assert image.shape == (1, 60, 60)
    row, col = divmod(int(image.view(-1).argmax()), 60)
    assert (row, col) == (6 * stride, 9 * stride)


def test_config_round_trips_through_a_dict() -> None:
    config = AttentionNetConfig(in_channels=3, num_classes=4, stages=((8, 2), (16, 2), (16, 1)))
    assert AttentionNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config fields"):
        AttentionNetConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="stride 1 or 2"):
        AttentionNetConfig(stages=((8, 3),))


def test_only_small_interpolation_matrices_are_cached() -> None:
    """Clients choose image sizes: every size they send must not stay in memory for good."""
    _cached_interpolation_matrix.cache_clear()
    grid = torch.rand(1, 8, 8)
    small = upsample_to_input(grid, 30, 30, 4)
    large = upsample_to_input(torch.rand(1, 200, 200), 800, 800, 4)
    assert _cached_interpolation_matrix.cache_info().currsize == 1  # 30 pixels × 8 cells, both axes
    assert large.shape == (1, 800, 800)
    assert torch.equal(upsample_to_input(grid, 30, 30, 4), small)
    assert _cached_interpolation_matrix.cache_info().hits == 3
    maxsize = _cached_interpolation_matrix.cache_info().maxsize
    assert maxsize is not None
    cells = CACHED_MATRIX_MAX_PIXELS // 4 + 1  # the most cells such a side has at stride 4
    assert maxsize * CACHED_MATRIX_MAX_PIXELS * cells * 4 <= 32 << 20


def grid_sampled(grid: torch.Tensor, input_height: int, input_width: int, stride: int) -> torch.Tensor:
    """The reference: ``grid_sample``, bilinear, border-clamped, on cell centres."""
    _, height, width = grid.shape
    sample_grid = input_sample_grid(height, width, input_height, input_width, stride)
    return F.grid_sample(
        grid.unsqueeze(1),
        sample_grid.expand(grid.shape[0], -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    ).squeeze(1)


@pytest.mark.parametrize(
    ("grid_size", "image_size", "stride"),
    [((8, 8), (60, 60), 8), ((15, 15), (60, 57), 4), ((1, 5), (16, 40), 8), ((4, 4), (16, 16), 4),
     ((13, 25), (100, 197), 8), ((2, 2), (5, 9), 4)],
)  # fmt: skip
def test_separable_resampling_equals_grid_sample(
    grid_size: tuple[int, int], image_size: tuple[int, int], stride: int
) -> None:
    """The matrix products and ``grid_sample`` compute the same bilinear map, pixels past the last cell
    included; the products only run faster on small images."""
    assert image_size[0] * image_size[1] <= SEPARABLE_MAX_PIXELS
    grid = torch.randn(3, *grid_size)
    separable = upsample_to_input(grid, *image_size, stride)
    assert separable.shape == (3, *image_size)
    torch.testing.assert_close(separable, grid_sampled(grid, *image_size, stride), rtol=1e-5, atol=1e-5)


def test_large_images_are_resampled_by_grid_sample() -> None:
    grid = torch.rand(1, 130, 129)
    image = upsample_to_input(grid, 1030, 1025, 8)
    assert SEPARABLE_MAX_PIXELS < 1030 * 1025
    assert torch.equal(image, grid_sampled(grid, 1030, 1025, 8))
