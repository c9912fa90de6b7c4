"""MONA/ARCO "consistency" objective: equivariance of the prediction under a spatial warp (methods.md 5.3b).

With a random spatial transform T (flip / scaling / smooth warp, :mod:`nnunet_semicl.augment`) the
student's prediction on the warped image should equal the warped prediction on the original image:

    L_eqv = mean over masked pixels of KL( stopgrad(T(softmax f(x))) || softmax f(T(x)) ).

The caller builds the target (the stop-gradient probabilities warped with the same T as the
input) and the mask: the warped :func:`confident_foreground_mask` of the un-warped prediction,
intersected with the warp's validity mask. The released code computes this term in 2D only (it is
not added to the 3D loss); ours is dimension-agnostic and the trainer decides where to use it.
"""
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.numerics import at_least_fp32, zero_with_graph


@torch.no_grad()
def confident_foreground_mask(probs: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """``[B, *spatial]`` bool: argmax is not background (class 0) and the max probability >= threshold (0.7)."""
    conf, arg = probs.max(dim=1)
    return (arg != 0) & (conf >= threshold)


def equivariance_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``KL(target || softmax(student_logits))`` averaged over ``mask``; 0-d tensor.

    Args:
        student_logits: ``[B, K, *spatial]`` student logits on the warped input (with gradient).
        target_probs: ``[B, K, *spatial]`` probabilities, already warped by the caller (used detached);
            zero entries contribute 0 (0 log 0 = 0).
        mask: bool ``[B, *spatial]``.

    Returns a zero that keeps the graph when the mask is empty. fp32 (fp64 stays fp64) with
    autocast off.
    """
    if student_logits.shape != target_probs.shape or tuple(mask.shape) != (student_logits.shape[0],
                                                                           *student_logits.shape[2:]):
        raise ValueError(f"equivariance_loss: shapes do not match: logits {tuple(student_logits.shape)}, "
                         f"target {tuple(target_probs.shape)}, mask {tuple(mask.shape)}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        logits = at_least_fp32(student_logits)
        target = target_probs.detach().to(logits.dtype)
        mask = mask.bool()
        log_p = F.log_softmax(logits, dim=1)
        kl = (torch.special.xlogy(target, target) - target * log_p).sum(dim=1)   # [B, *spatial]
        if not bool(mask.any()):
            return zero_with_graph(logits)
        return kl[mask].mean()
