"""Heat images from feature-grid maps: peak scaling and batched rendering."""

from __future__ import annotations

import torch

from models.attention_net import upsample_to_input
from models.maps import render_heatmaps, scale_peaks_to_255


def test_heatmap_scaling_puts_each_maximum_at_255() -> None:
    maps = torch.tensor(
        [
            [[0.0, 0.5], [1.0, 2.0]],
            [[-1.0, 0.25], [0.5, 1.0]],  # negatives show as 0
            [[0.0, 0.0], [0.0, 0.0]],  # nothing to show: all zero, not a division by zero
            [[-1.0, -2.0], [-0.5, -3.0]],
            [[1.0, float("nan")], [0.5, 0.25]],  # a broken map is blank, never garbage
        ]
    )
    heat = scale_peaks_to_255(maps).round_().to(torch.uint8)
    assert heat.dtype == torch.uint8
    assert heat.tolist() == [
        [[0, 64], [128, 255]],
        [[0, 64], [128, 255]],
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
    ]


def test_batched_rendering_equals_rendering_each_map_alone() -> None:
    maps = torch.rand(5, 15, 15) - 0.2
    together = render_heatmaps(maps, 60, 57, 4)
    assert together.shape == (5, 60, 57)
    for index in range(5):
        alone = render_heatmaps(maps[index : index + 1], 60, 57, 4)[0]
        assert torch.equal(together[index], alone)
        upsampled = upsample_to_input(maps[index : index + 1], 60, 57, 4)[0]
        assert int(together[index].flatten()[int(upsampled.argmax())]) == 255  # the peak stays the peak


def test_an_empty_batch_renders_nothing() -> None:
    assert render_heatmaps(torch.zeros(0, 15, 15), 60, 60, 4).shape == (0, 60, 60)
