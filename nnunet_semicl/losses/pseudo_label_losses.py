"""Losses on teacher pseudo-labels: the teacher's hard labels and confidence, the confidence-weighted
cross-entropy shared by ACTION, ACTION++, MONA and ARCO (methods.md 2.5) and a masked per-class Dice.
"""
import torch
import torch.nn.functional as F


def pseudo_labels(teacher_logits: torch.Tensor):
    """Teacher softmax (fp32), hard pseudo-label (argmax) and confidence (max probability)."""
    probs = torch.softmax(teacher_logits.float(), dim=1)
    confidence, labels = probs.max(dim=1)
    return probs, labels, confidence


def confidence_weighted_ce(student_logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                           valid: torch.Tensor = None, threshold: float = 0.97) -> torch.Tensor:
    """``sum_{b,i} rho_b * CE(p_s(b,i), y(b,i)) / #{b,i: CE > 0}`` with ``rho_b`` = share of image b's valid
    pixels whose confidence reaches ``threshold`` (ReCo's and ACTION's unsupervised loss).

    The mean runs over every valid pixel with a positive cross-entropy, as in the official loss, so
    an image without confident pixels (``rho_b = 0``) still counts in the denominator: the loss
    scales with the share of confident images, a built-in ramp while the teacher is young.

    Args:
        student_logits: ``[B, K, *spatial]`` student output on the strong view.
        labels: ``[B, *spatial]`` pseudo-labels (moved with the strong view's geometry).
        confidence: ``[B, *spatial]`` teacher confidence, moved the same way.
        valid: ``[B, *spatial]`` bool; False where the strong view has no content (outside a warp,
            cut-out). Invalid pixels neither count in ``rho_b`` nor get a loss.

    Returns a scalar; zero (keeping the graph) when no pixel has a positive loss. fp32 throughout.
    """
    logits = student_logits.float()
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    ce = F.cross_entropy(logits, labels.long(), reduction="none")  # [B, *spatial]
    dims = tuple(range(1, valid.ndim))
    n_valid = valid.sum(dim=dims).clamp_min(1)
    rho = ((confidence >= threshold) & valid).sum(dim=dims).float() / n_valid.float()
    weighted = ce * rho.view(-1, *([1] * (ce.ndim - 1))) * valid
    n_positive = ((ce > 0) & valid).sum()
    if not bool(n_positive > 0) or not bool((weighted > 0).any()):
        return logits.sum() * 0.0
    return weighted.sum() / n_positive


def confidence_masked_ce(student_logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                         valid: torch.Tensor = None, threshold: float = 0.97) -> torch.Tensor:
    """``sum_{b,i} 1[conf(b,i) >= threshold] * CE(p_s(b,i), y(b,i)) / #{valid pixels}``: the per-pixel mask of
    FixMatch / UniMatch / AD-MT, in place of ACTION's per-image weight ``rho_b``.

    :func:`confidence_weighted_ce` trains every pixel of an image toward the teacher's argmax, the unconfident
    ones too (object boundaries, a class the teacher is unsure of); here only confident pixels get a loss. The
    mean over all valid pixels keeps the official loss's scaling with the share of confident pixels. Same
    arguments; a scalar, fp32; zero (keeping the graph) when no valid pixel is confident.
    """
    logits = student_logits.float()
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    confident = valid & (confidence >= threshold)
    if not bool(confident.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, labels.long(), reduction="none")
    return (ce * confident).sum() / valid.sum()


def masked_soft_dice(student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                     include_background: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - mean_c Dice_c`` of the student's softmax against hard (pseudo-)labels over the ``mask`` pixels.

    Batch Dice per class (as nnU-Net's 2D/3D loss), so a rare class weighs as much as a large one and
    is not swamped by background in the pixel-averaged cross-entropy (UniMatch, AD-MT, BCP use a
    Dice term on pseudo-labels for this). Pixels outside ``mask`` (not confident, no content) take no
    part. A class absent from target and prediction inside the mask scores Dice 1 (no gradient).

    Args:
        student_logits: ``[B, K, *spatial]``; labels: ``[B, *spatial]`` int; mask: ``[B, *spatial]`` bool.
    Returns a scalar in [0, 1], fp32; zero (keeping the graph) when the mask is empty.
    """
    logits = student_logits.float()
    if not bool(mask.any()):
        return logits.sum() * 0.0
    k = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels.long().clamp(0, k - 1), k).movedim(-1, 1).float()
    m = mask[:, None].float()
    dims = (0,) + tuple(range(2, logits.ndim))
    tp = (probs * onehot * m).sum(dims)
    fp = (probs * (1 - onehot) * m).sum(dims)
    fn = ((1 - probs) * onehot * m).sum(dims)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-8)
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()
