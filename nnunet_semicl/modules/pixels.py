"""Per-pixel helpers on ``[B, C, *spatial]`` feature maps and ``[B, *spatial]`` label maps (any number of
spatial axes)."""
from typing import Optional

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of an integer or bool map ``[B, *spatial]``."""
    if tuple(labels.shape[1:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(labels.dtype)


def gather_pixels(features: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Rows ``[n, C]`` of a ``[B, C, *spatial]`` map at flat indices into its ``[B, *spatial]`` grid."""
    return flatten_pixels(features)[flat_index]


def flatten_pixels(features: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, C, *spatial]`` -> ``[B * prod(spatial), C]`` (optionally only where ``mask``)."""
    c = features.shape[1]
    flat = features.movedim(1, -1).reshape(-1, c)
    return flat if mask is None else flat[mask.reshape(-1)]


def pixel_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory layout where that is the fast one: 2D maps (``[B, C, H, W]``) on the CPU.

    There, bilinear upsampling of a wide channels-first map is about 6x slower than of a channels-last one,
    a 1x1 convolution keeps its input's layout, and a channels-last map flattens to ``[pixels, C]`` (what
    every pixel contrast reads) without a copy: the representation head's forward + backward takes less than
    half the time. Same values up to float rounding. Anything else is returned as it is (3D: the CPU's conv3d
    does not keep a channels-last input's layout, no gain measured; CUDA: not measured)."""
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x
