"""Dtype and edge-case helpers shared by the losses (docs/contributing.md, "Numerics")."""
import torch


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 are kept (fp64 for gradcheck): similarities, temperatures and
    softmax must not run in half precision under AMP."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def zero_with_graph(t: torch.Tensor) -> torch.Tensor:
    """A 0-d zero (fp32 or wider) that still depends on ``t``, so ``.backward()`` works and gives zero
    gradients: what a loss returns when its edge case leaves nothing to contrast."""
    return at_least_fp32(t.reshape(-1)[:1]).sum() * 0.0
