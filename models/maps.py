"""Heat images from feature-grid maps: the tensor math between the network's maps and a heatmap PNG.

The network explains a class with a map over its feature grid (:class:`~models.attention_net.AttentionOutput`:
attention weights, or per-position evidence for a class). A heat image is that map's positive part
scaled so its peak is 255 and resampled onto the input's pixels (pixel-aligned, as
:func:`~models.attention_net.upsample_to_input` places the cells). Pure PyTorch, on any device; the
service encodes the result as PNG elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.attention_net import upsample_to_input


def scale_peaks_to_255(maps: Tensor) -> Tensor:
    """The positive part of each (H, W) map of a (B, H, W) batch, scaled so its maximum is 255; float32.

    A map with no positive maximum, or with any NaN or infinity, becomes all zero: blank, never garbage.
    """
    positive = maps.float().clamp(min=0)
    if positive.numel() == 0:
        return positive
    peak = positive.amax(dim=(1, 2), keepdim=True)
    scale = (255.0 / peak).nan_to_num_(nan=0.0, posinf=0.0)  # a zero peak gives inf; a NaN peak, NaN
    return (positive * scale).nan_to_num_(nan=0.0)  # an infinite or NaN map times 0 gives NaN


def render_heatmaps(maps: Tensor, input_height: int, input_width: int, stride: int) -> Tensor:
    """Resample the positive part of feature-grid maps onto the input's pixels as 8-bit heat images.

    Negative evidence shows as 0 (attention maps are never negative, so they are unchanged). One
    batched call for maps of images of one size, on the tensors' device.

    The maps are scaled before they are resampled, on their few grid cells instead of every pixel. That
    changes nothing: the resampling puts each cell on a pixel and makes every other pixel a convex
    combination of cells, so a map's peak is the same on the grid as on the pixels.

    Args:
        maps: (B, h, w) maps over each image's valid feature grid.
        input_height: Height of the images in pixels.
        input_width: Width of the images in pixels.
        stride: The network's feature stride.

    Returns:
        (B, input_height, input_width) uint8 heat images: each map's peak is 255, negatives 0.
    """
    scaled = upsample_to_input(scale_peaks_to_255(maps), input_height, input_width, stride)
    return scaled.round_().to(torch.uint8)  # in [0, 255] already: convex combinations of [0, 255]
