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
