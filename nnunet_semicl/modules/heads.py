"""Heads that live beside the nnU-Net network (owned by the trainer, never inside ``self.network``)."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semicl.modules.pixels import pixel_major


def conv_nd(dim: int):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]


def select_representation_taps(spatial_shapes: Sequence[Sequence[int]], max_voxels: int,
                               patch_size: Optional[Sequence[int]] = None, min_stride: int = 1) -> int:
    """Index of the tap at whose resolution the pixel representation is computed.

    ``spatial_shapes`` are ordered lowest resolution first (as :func:`unet_tap_modules`). The
    choice is the finest tap whose size per sample is at most ``max_voxels`` and, when
    ``patch_size`` is given, whose largest per-axis stride is at least ``min_stride`` (ReCo computes
    its representation at 1/4 resolution). The head uses that tap and every coarser one. This bounds
    the memory and compute of the contrastive machinery whatever patch nnU-Net plans (3D above all).
    """
    best = 0
    for i, s in enumerate(spatial_shapes):
        n = 1
        for d in s:
            n *= int(d)
        stride_ok = patch_size is None or max(int(p) // int(d) for p, d in zip(patch_size, s)) >= min_stride
        if n <= max_voxels and stride_ok:
            best = i
    return best


class RepresentationHead(nn.Module):
    """Multi-scale representation: ``conv1x1(cat(upsample(f_0), ..., upsample(f_t)))`` -> act -> ``conv1x1``.

    Implemented as a per-scale 1x1 projection at each tap's own resolution followed by upsampling and
    a sum. Because a 1x1 convolution is linear per pixel and (bi/tri)linear upsampling is linear per
    channel, this equals "upsample, concatenate, 1x1 conv" exactly, but never materialises the wide
    concatenated tensor at the target resolution. Dimension-agnostic (1D, 2D, 3D).

    Args:
        in_channels: channels of the taps used, lowest resolution first; the output has the spatial
            size of the last one.
        hidden_dim / out_dim: widths of the two layers.
        activation: put a nonlinearity (norm + LeakyReLU) between the two layers. ACTION's head has
            none (two linear layers); MONA/ARCO's projection has one.
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int, out_dim: int, dim: int,
                 activation: bool = True):
        super().__init__()
        conv = conv_nd(dim)
        self.dim = dim
        self.mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dim]
        self.proj = nn.ModuleList([conv(c, hidden_dim, 1, bias=False) for c in in_channels])
        self.bias = nn.Parameter(torch.zeros(hidden_dim))
        if activation:
            norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]
            self.act = nn.Sequential(norm(hidden_dim, affine=True), nn.LeakyReLU(0.01, inplace=True))
        else:
            self.act = nn.Identity()
        self.out = conv(hidden_dim, out_dim, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.proj):
            raise ValueError(f"RepresentationHead expects {len(self.proj)} feature maps, got {len(features)}")
        target = features[-1].shape[2:]
        x = None
        for f, p in zip(features, self.proj):
            y = p(pixel_major(f))
            if tuple(y.shape[2:]) != tuple(target):
                y = F.interpolate(y, size=target, mode=self.mode, align_corners=False)
            # in place: neither a 1x1 convolution nor upsampling keeps its output for backward, and a new
            # full-size tensor per add costs as much as the add (same values)
            x = y if x is None else x.add_(y)
        x = x.add_(self.bias.view(1, -1, *([1] * self.dim)))
        return self.out(self.act(x))


class MLP(nn.Module):
    """Stack of Linear layers; ``activation=False`` reproduces ISD/ACTION's purely linear projector."""

    def __init__(self, dims: Sequence[int], activation: bool = False, bias: bool = True):
        super().__init__()
        layers: List[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if activation and i < len(dims) - 2:
                layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def grid_pool(x: torch.Tensor, grid: Union[int, Sequence[int]]) -> torch.Tensor:
    """``[B, C, *spatial]`` -> ``[B, C * prod(grid)]``: adaptive average pooling to ``grid`` cells per axis,
    flattened (1, 2 or 3 spatial axes)."""
    nd = x.ndim - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"grid_pool expects [B, C, *spatial] with 1-3 spatial axes, got {tuple(x.shape)}")
    size = (grid,) * nd if isinstance(grid, int) else tuple(grid)
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[nd]
    return pool(x, size).reshape(x.shape[0], -1)
