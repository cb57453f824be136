"""Soft spatial attention classifier: a strided conv backbone, a conv attention head, attention pooling.

The design follows the "attention pooling" family of image classifiers: a convolutional feature
extractor gives features F (C×h×w); a small convolutional head scores every position and a softmax
over the valid positions turns the scores into attention weights A (h×w, summing to one); the pooled
vector v = Σ_ij A_ij·F_ij feeds a linear classifier. See Xu et al. 2015, "Show, Attend and Tell"
(soft attention), and Jetley et al. 2018, "Learn To Pay Attention" (trainable attention for CNN
classification); the data set is Mnih et al. 2014's cluttered translated MNIST.

Because the classifier is linear, the class-c logit decomposes exactly over positions:

    logit_c = Σ_ij A_ij · (w_c · F_ij) + b_c

so ``A_ij · (w_c · F_ij)`` is the additive contribution of position (i, j) to the class-c logit — a
class-conditional evidence map from the same forward pass, with no gradients.

The network is fully convolutional. A batch of differently sized images is zero-padded (in the
normalised input space) and carries a validity mask: every layer zeroes the padded positions, and the
attention softmax ignores them, so a padded batched result equals the single-image result.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AttentionNetConfig:
    """Hyperparameters of :class:`AttentionNet`; stored in every checkpoint."""

    in_channels: int = 1  # 1 for grayscale, 3 for RGB input
    num_classes: int = 10
    # (width, stride) of each 3×3 conv of the backbone; strides are 1 or 2.
    stages: tuple[tuple[int, int], ...] = ((24, 2), (48, 2), (64, 1), (64, 1))
    residual: bool = True  # identity shortcut around stride-1 convs whose width doesn't change
    attention_hidden: int = 16  # hidden width of the 1×1 attention scoring head
    dropout: float = 0.1  # on the pooled vector, training only
    min_input_size: int = 16  # smallest height/width the network accepts

    def __post_init__(self) -> None:
        self.stages = tuple((int(w), int(s)) for w, s in self.stages)
        if not self.stages or any(s not in (1, 2) for _, s in self.stages):
            raise ValueError("stages must be a non-empty list of (width, stride) with stride 1 or 2")

    @property
    def num_downsamplings(self) -> int:
        return sum(1 for _, stride in self.stages if stride == 2)

    @property
    def feature_stride(self) -> int:
        """Input pixels per feature-grid step."""
        return int(2**self.num_downsamplings)

    @property
    def feature_channels(self) -> int:
        return self.stages[-1][0]

    @property
    def grid_layer(self) -> int:
        """Index of the backbone layer that first reaches the feature grid: the last stride-2 layer."""
        return max((i for i, (_, stride) in enumerate(self.stages) if stride == 2), default=0)

    @property
    def grid_layer_channels(self) -> int:
        return self.stages[self.grid_layer][0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class AttentionOutput:
    """What one forward pass gives.

    Attributes:
        logits: Class scores before softmax, (B, K).
        attention: Attention weights over the feature grid, (B, h, w); each map sums to one over its
            valid positions and is zero on padding.
        features: The backbone features F the attention pooled, (B, C, h, w).
        classifier_weight: The linear classifier's weights w, (K, C).
        valid_size: Valid feature-grid height and width of every image, (B, 2).
        grid_features: The output of the first backbone layer on the feature grid
            (:attr:`AttentionNetConfig.grid_layer`), (B, C₁, h, w), zero on padding: the local stroke
            statistics the in-domain score reads (:mod:`models.domain`). Kept by reference, not computed.
    """

    logits: Tensor
    attention: Tensor
    features: Tensor = field(repr=False)
    classifier_weight: Tensor = field(repr=False)
    valid_size: Tensor = field(repr=False)
    grid_features: Tensor = field(repr=False)

    def position_logits(self, target: Tensor) -> Tensor:
        """The classifier's response to every position's features, w_c · F_ij, for each image's class c.

        Computed on demand and for one class an image: for a 1000-class model on a 56×56 grid, all
        classes at every position would cost more memory traffic than the backbone.

        Args:
            target: Class index per image, (B,).

        Returns:
            (B, h, w) float32 maps.
        """
        weight = self.classifier_weight[target].to(self.features.dtype)
        return torch.einsum("bc,bchw->bhw", weight, self.features).float()

    def evidence(self, target: Tensor) -> Tensor:
        """Class-conditional evidence maps: A_ij · (w_c · F_ij) for each image's target class c.

        Args:
            target: Class index per image, (B,).

        Returns:
            (B, h, w) maps whose sum over positions equals each logit minus the classifier bias.
        """
        return self.attention * self.position_logits(target)


def output_size(size: Tensor | int, stride_2_layers: int) -> Tensor | int:
    """Valid output extent after ``stride_2_layers`` 3×3, stride-2, padding-1 convolutions."""
    for _ in range(stride_2_layers):
        size = (size + 1) // 2
    return size


def grid_mask(valid_size: Tensor, height: int, width: int) -> Tensor:
    """A (B, 1, height, width) float mask, one inside each image's valid top-left region."""
    rows = torch.arange(height, device=valid_size.device).view(1, height, 1)
    cols = torch.arange(width, device=valid_size.device).view(1, 1, width)
    inside = (rows < valid_size[:, 0].view(-1, 1, 1)) & (cols < valid_size[:, 1].view(-1, 1, 1))
    return inside.unsqueeze(1).float()


class ConvBNReLU(nn.Module):
    """3×3 convolution, batch norm, ReLU; :meth:`fuse` folds the norm into the conv for serving."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, residual: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.activation: nn.Module = nn.ReLU()  # no parameters: checkpoints are unchanged
        self.stride = stride
        self.residual = residual and stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.activation(self.bn(self.conv(x)))
        return x + out if self.residual else out

    @torch.no_grad()
    def fuse(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn = self.bn
        assert bn.running_var is not None
        assert bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            self.conv.in_channels, self.conv.out_channels, 3, stride=self.stride, padding=1, bias=True
        ).to(self.conv.weight.device)
        fused.weight.copy_(self.conv.weight * scale.view(-1, 1, 1, 1))
        assert fused.bias is not None
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv = fused
        self.bn = nn.Identity()


class AttentionNet(nn.Module):
    """Attention-pooling classifier whose attention map is a first-class output."""

    def __init__(self, config: AttentionNetConfig) -> None:
        super().__init__()
        self.config = config
        layers = []
        channels = config.in_channels
        for width, stride in config.stages:
            layers.append(ConvBNReLU(channels, width, stride=stride, residual=config.residual))
            channels = width
        self.backbone = nn.ModuleList(layers)
        self.attention_head = nn.Sequential(
            nn.Conv2d(channels, config.attention_hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.attention_hidden, 1, 1),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Start from uniform attention so early training sees the whole canvas.
        last = self.attention_head[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def feature_valid_size(self, input_size: Tensor) -> Tensor:
        """Valid feature-grid extent for each image's valid input extent, (B, 2)."""
        result = output_size(input_size, self.config.num_downsamplings)
        assert isinstance(result, Tensor)
        return result

    def forward_features(self, x: Tensor, input_size: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Backbone features F, (B, C, h, w), and the feature-grid mask (None when unpadded).

        Args:
            x: Normalised images, (B, in_channels, H, W), zero beyond each image's valid region.
            input_size: Valid (height, width) of each image, (B, 2); None when no image is padded.
        """
        features, mask, _ = self._backbone(x, input_size)
        return features, mask

    def _backbone(self, x: Tensor, input_size: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """:meth:`forward_features`, and the output of the config's ``grid_layer`` as well."""
        mask = None
        size = input_size
        grid_features = x
        for index, layer in enumerate(self.backbone):
            x = layer(x)
            if input_size is not None:
                assert size is not None
                if layer.stride == 2:
                    size = (size + 1) // 2
                if mask is None or mask.shape[-2:] != x.shape[-2:]:
                    mask = grid_mask(size, x.shape[-2], x.shape[-1]).to(x.dtype)
                x = x * mask
            if index == self.config.grid_layer:
                grid_features = x
        return x, mask, grid_features

    def forward_head(self, features: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Class logits and attention weights from backbone features."""
        scores = self.attention_head(features).squeeze(1).float()
        if mask is not None:
            scores = scores.masked_fill(mask.squeeze(1) == 0, float("-inf"))
        batch, _, height, width = features.shape
        attention = torch.softmax(scores.view(batch, -1), dim=1).view(batch, height, width)
        pooled = torch.einsum("bhw,bchw->bc", attention.to(features.dtype), features)
        logits = self.classifier(self.dropout(pooled))
        return logits.float(), attention

    def forward(self, x: Tensor, input_size: Tensor | None = None) -> AttentionOutput:
        """Classify a batch and return the attention that produced each prediction.

        Args:
            x: Normalised images, (B, in_channels, H, W); padded images zero beyond their valid region.
            input_size: Valid (height, width) per image, (B, 2); omit when no image is padded.
        """
        min_size = self.config.min_input_size
        if x.shape[-1] < min_size or x.shape[-2] < min_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])}; the minimum is {min_size}×{min_size}")
        features, mask, grid_features = self._backbone(x, input_size)
        logits, attention = self.forward_head(features, mask)
        if input_size is None:
            # Filled on the device: copying a host tensor there would wait for the queued pass.
            valid = torch.full((x.shape[0], 2), features.shape[-1], dtype=torch.long, device=x.device)
            valid[:, 0] = features.shape[-2]
        else:
            valid = self.feature_valid_size(input_size)
        return AttentionOutput(logits, attention, features, self.classifier.weight, valid, grid_features)

    @torch.no_grad()
    def fuse_for_inference(self) -> AttentionNet:
        """Fold batch norms into convolutions (eval-mode only); returns self."""
        self.eval()
        for layer in self.backbone:
            assert isinstance(layer, ConvBNReLU)
            layer.fuse()
        return self


def upsample_to_input(grid: Tensor, input_height: int, input_width: int, stride: int) -> Tensor:
    """Bilinearly resample a feature-grid map onto input pixels, pixel-aligned.

    Feature cell (i, j) of the 3×3/stride-2/padding-1 backbone is centred on input pixel
    (stride·i, stride·j), so input pixel y maps to grid coordinate y / stride; pixels past the last
    cell take its value. Every cell thus lands exactly on one pixel, and every pixel is a convex
    combination of at most four cells.

    Bilinear resampling is separable: up to :data:`SEPARABLE_MAX_PIXELS` it runs as two small matrix
    products, rows · grid · colsᵀ, faster there than ``grid_sample`` (``python -m bench.render_cost``).
    Above it the products' cost, which grows with pixels × cells, passes ``grid_sample``'s. The two
    agree to float rounding.

    Args:
        grid: Maps over the valid feature grid, (B, h, w).
        input_height: Height of the input image in pixels.
        input_width: Width of the input image in pixels.
        stride: The network's feature stride.

    Returns:
        (B, input_height, input_width) float32 maps.
    """
    batch, height, width = grid.shape
    grid = grid.float()
    if input_height * input_width <= SEPARABLE_MAX_PIXELS:
        rows = interpolation_matrix(height, input_height, stride, grid.device)
        cols = interpolation_matrix(width, input_width, stride, grid.device)
        return (rows @ grid @ cols.T).contiguous()  # row-major, whatever layout matmul chose
    sample_grid = input_sample_grid(height, width, input_height, input_width, stride, grid.device)
    sampled = F.grid_sample(
        grid.unsqueeze(1),
        sample_grid.expand(batch, -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled.squeeze(1)


SEPARABLE_MAX_PIXELS = 1024 * 1024
CACHED_MATRIX_MAX_PIXELS = 512  # per side; at stride 4, 258 KiB a matrix and 17 MiB for the whole cache


def interpolation_matrix(cells: int, pixels: int, stride: int, device: torch.device | str = "cpu") -> Tensor:
    """The (pixels, cells) float32 matrix of :func:`upsample_to_input` along one axis.

    Row y holds the bilinear weights of the two cells around coordinate y / stride. Matrices for sides
    up to :data:`CACHED_MATRIX_MAX_PIXELS` are cached per device, since copying one to a GPU for every
    call would make the host wait for everything already queued there; clients choose the sizes, so
    larger ones are built each time (microseconds next to resampling onto that many pixels).
    """
    device = torch.device(device)
    if pixels <= CACHED_MATRIX_MAX_PIXELS:
        return _cached_interpolation_matrix(cells, pixels, stride, device)
    return _interpolation_matrix(cells, pixels, stride, device)


def _interpolation_matrix(cells: int, pixels: int, stride: int, device: torch.device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable inside and outside inference mode
        coordinate = (torch.arange(pixels, dtype=torch.float64) / stride).clamp(max=cells - 1)
        lower = coordinate.floor().long()
        upper = (lower + 1).clamp(max=cells - 1)
        weight = coordinate - lower
        matrix = torch.zeros(pixels, cells, dtype=torch.float64)
        index = torch.arange(pixels)
        matrix.index_put_((index, lower), 1 - weight, accumulate=True)
        matrix.index_put_((index, upper), weight, accumulate=True)
        return matrix.float().to(device)


_cached_interpolation_matrix = functools.lru_cache(maxsize=64)(_interpolation_matrix)


def input_sample_grid(
    height: int,
    width: int,
    input_height: int,
    input_width: int,
    stride: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The (1, H, W, 2) ``grid_sample`` grid of :func:`upsample_to_input` for inputs too large for the
    matrix products."""
    ys = torch.arange(input_height, dtype=torch.float32) / stride
    xs = torch.arange(input_width, dtype=torch.float32) / stride
    # align_corners=True maps -1 and 1 to the first and last cell centres.
    ny = ys / max(height - 1, 1) * 2 - 1 if height > 1 else torch.zeros_like(ys)
    nx = xs / max(width - 1, 1) * 2 - 1 if width > 1 else torch.zeros_like(xs)
    return torch.stack(torch.meshgrid(nx, ny, indexing="xy"), dim=-1).unsqueeze(0).to(device)


def channels_last(model: AttentionNet) -> AttentionNet:
    """The model with NHWC weights, the faster layout for its convolutions on CPU and GPU."""
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def cast_convolutions(model: AttentionNet, dtype: torch.dtype) -> AttentionNet:
    """Store the convolutions' weights and biases in ``dtype``, for inference under autocast to it.

    Autocast casts a float32 convolution's weight and bias to its dtype on every call; cast once, the
    answers are bitwise the same and a CPU pass is faster. Everything else, the classifier that the
    evidence maps read included, stays float32. Returns the model, changed in place.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.to(dtype)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_image(config: AttentionNetConfig, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass at the given input size (convs and heads)."""
    total = 0
    channels = config.in_channels
    h, w = height, width
    for out_channels, stride in config.stages:
        if stride == 2:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        total += h * w * out_channels * channels * 9
        channels = out_channels
    total += h * w * (channels * config.attention_hidden + config.attention_hidden)
    total += h * w * channels * config.num_classes * 2
    return total
