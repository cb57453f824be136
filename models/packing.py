"""Convolutions prepacked for oneDNN, with their ReLU fused: a faster CPU forward pass for serving.

``F.conv2d`` on a CPU hands oneDNN (the library PyTorch runs CPU convolutions with) plain NCHW or
NHWC weights, which it reorders into its own blocked layout on every call, then runs the ReLU as a
separate pass over the output. For this model's small images both are a large share of a
convolution's cost. :class:`PackedConv2d` reorders each weight once per input shape, the way
``torch.compile``'s freezing pass does for its one example shape, and calls the fused
convolution-plus-ReLU kernel that ``torch.compile`` emits (``torch.ops.mkldnn._convolution_pointwise``)
— without compiling, so any batch size and image size runs at once. The layout oneDNN wants depends on
the shape: a weight packed for another shape is reordered again on every call, slower than
``F.conv2d`` (measured in the server), hence one packed weight per recent shape.

Under bfloat16 the answers are bitwise the ones ``F.conv2d`` gives (``tests/test_models_packing.py``);
``python -m bench.cast_check`` times it. Inference only: a packed weight is an opaque oneDNN tensor,
outside the state dict, without gradients.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from models.attention_net import AttentionNet, ConvBNReLU, cast_convolutions

# Per convolution; the bundled model's weights take 0.3 MB a shape in bfloat16, so 10 MB at most.
# A shape dropped and met again costs one reorder, as every call of F.conv2d does.
MAX_PACKED_SHAPES = 32


def can_pack() -> bool:
    """Whether this PyTorch build has oneDNN and the fused kernel (x86 and ARM CPU builds do)."""
    available: bool = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return available and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class PackedConv2d(nn.Module):
    """A :class:`torch.nn.Conv2d` with its weight laid out for oneDNN per input shape; ReLU optional.

    Args:
        conv: The convolution to pack; it is not changed.
        dtype: The dtype the weights are stored and computed in; inputs are cast to it.
        relu: Fuse a ReLU onto the output.
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, relu: bool) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("only zero padding given as numbers can be packed")
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.dtype = dtype
        self.attribute = "relu" if relu else "none"
        self.plain_weight = conv.weight.detach().to(device="cpu", dtype=dtype).contiguous().to_mkldnn()
        self.bias = None if conv.bias is None else conv.bias.detach().to(device="cpu", dtype=dtype)
        self.packed: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()

    def weight_for(self, shape: tuple[int, ...]) -> Tensor:
        """The weight in the layout oneDNN picks for inputs of this shape; the last few shapes kept."""
        weight = self.packed.get(shape)
        if weight is None:
            # torch's stub lacks the input_size argument that the operator takes.
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
                self.plain_weight, self.padding, self.stride, self.dilation, self.groups, list(shape)
            )
            if len(self.packed) >= MAX_PACKED_SHAPES:
                self.packed.popitem(last=False)
            self.packed[shape] = weight
        else:
            self.packed.move_to_end(shape)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        # The last three arguments are the activation's scalars and algorithm; a ReLU takes none.
        return torch.ops.mkldnn._convolution_pointwise(  # type: ignore[no-any-return]
            x.to(self.dtype),
            self.weight_for(tuple(x.shape)),
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.attribute,
            [None],
            "",
        )

    def extra_repr(self) -> str:
        return f"stride={tuple(self.stride)}, dtype={self.dtype}, fused={self.attribute}"


def pack_convolutions(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace the convolutions of every fused :class:`AttentionNet` in ``model`` (itself, or one it
    wraps) with packed ones; returns ``model``, changed in place.

    Args:
        model: A CPU-resident model after :meth:`AttentionNet.fuse_for_inference`.
        dtype: float32 to run without autocast, or the dtype of the CPU autocast it will run under:
            the convolutions' outputs have this dtype.
    """
    if not can_pack():
        raise RuntimeError("this PyTorch build has no oneDNN fused convolution kernel")
    networks = [module for module in model.modules() if isinstance(module, AttentionNet)]
    if not networks:
        raise ValueError(f"no AttentionNet in {type(model).__name__}")
    for network in networks:
        _pack_network(network, dtype)
    return model


def _pack_network(model: AttentionNet, dtype: torch.dtype) -> None:
    for layer in model.backbone:
        assert isinstance(layer, ConvBNReLU)
        if not isinstance(layer.bn, nn.Identity) or not isinstance(layer.conv, nn.Conv2d):
            raise ValueError("pack a model after fuse_for_inference(), and only once")
        # Typed as the Conv2d it replaces; a serving model never reads the convolution's attributes.
        layer.conv = PackedConv2d(layer.conv, dtype, relu=isinstance(layer.activation, nn.ReLU))  # type: ignore[assignment]
        layer.activation = nn.Identity()
    head: list[nn.Module] = []
    modules = list(model.attention_head)
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            followed_by_relu = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
            head.append(PackedConv2d(module, dtype, relu=followed_by_relu))
        elif not (isinstance(module, nn.ReLU) and i > 0 and isinstance(modules[i - 1], nn.Conv2d)):
            head.append(module)
    model.attention_head = nn.Sequential(*head)


def prepare_cpu_convolutions(model: nn.Module, amp_dtype: torch.dtype | None) -> nn.Module:
    """The convolutions a CPU serves fastest: packed where PyTorch has oneDNN, else stored in the
    autocast dtype (:func:`models.attention_net.cast_convolutions`). Returns ``model``, changed."""
    if can_pack():
        return pack_convolutions(model, amp_dtype or torch.float32)
    if amp_dtype is not None:
        for network in (m for m in model.modules() if isinstance(m, AttentionNet)):
            cast_convolutions(network, amp_dtype)
    return model
