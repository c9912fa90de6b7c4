"""UniMatch's feature perturbation (Yang et al., CVPR 2023, "Revisiting Weak-to-Strong Consistency in
Semi-Supervised Semantic Segmentation"): channel dropout on the encoder's features, between encoder and decoder.

UniMatch passes its encoder features through ``nn.Dropout2d(0.5)`` before the decoder; for a U-Net every skip
feature (the bottleneck included) is such a feature. Pure PyTorch, 2D and 3D alike.
"""
from typing import List, Optional, Sequence

import torch


def channel_dropout(features: Sequence[torch.Tensor], p: float = 0.5, training: bool = True,
                    generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Each ``[B, C, *spatial]`` tensor of ``features`` with whole channels zeroed, independently per sample and
    channel with probability ``p``, and the kept ones scaled by ``1 / (1 - p)`` (``nn.Dropout2d`` / ``Dropout3d``
    for any number of spatial dimensions). The identity when ``p == 0`` or not ``training``. Gradients flow
    through the kept channels."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"channel dropout probability must be in [0, 1), got {p}")
    if p == 0.0 or not training:
        return list(features)
    out = []
    for x in features:
        keep = torch.empty(x.shape[:2] + (1,) * (x.ndim - 2), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1.0 - p, generator=generator)
        out.append(x * keep.div_(1.0 - p))
    return out
