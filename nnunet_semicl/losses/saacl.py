"""ACTION++'s supervised adaptive anatomical contrastive loss (SAACL), spec section 4.5.

Per labeled anchor pixel i (student feature z_i) the keys are its own teacher view, a FIFO queue of
past teacher features with their labels, and all K class centres. With ``s_ik`` the softmax over
those keys of ``z_i . k / tau`` (unit vectors), and positives ``P_i`` = {own view} + {queue entries
with the anchor's label} + {nu_i, the centre assigned to the anchor's class}:

    L = -(1/n) sum_i [ sum_{k in P_i minus nu_i} log s_ik + lambda_a log s_{i nu_i} ] / |P_i|

``|P_i|`` counts nu_i once whatever ``lambda_a`` is (spec 4.5). The trainer pushes the anchors'
teacher views and labels into the queue (``modules.queues.RingBuffer``) after the loss, and updates
the centre allocation (``modules.centres.AdaptiveCentreAllocation``) with the student anchors.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet_semicl.losses.similarity import logsumexp_dot
from nnunet_semicl.sampling.base import PixelSampler
from nnunet_semicl.sampling.uniform import UniformSampler

# Spec 4.5: 256 anchors per class, queue of 256 * 3 * 4 * 4 = 12,288 teacher features.
ANCHORS_PER_CLASS = 256
QUEUE_SIZE = 12288


def sample_class_anchors(labels: torch.Tensor, valid: Optional[torch.Tensor] = None,
                         n_per_class: int = ANCHORS_PER_CLASS, generator: Optional[torch.Generator] = None,
                         sampler: Optional[PixelSampler] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor positions for SAACL (spec 4.5, "Anchors").

    ``labels`` ``[B, *spatial]`` (integer class map of the labeled batch, any dimensionality),
    ``valid`` a bool mask of the same shape (e.g. ``labels != ignore_label``; ``None`` = all pixels).
    For each class present among the valid pixels, ``n_per_class`` of its pixels are drawn uniformly
    with replacement; if fewer than 2 classes are present, ``n_per_class`` pixels are drawn from all
    valid pixels instead. Returns ``(flat_index, anchor_labels)``: flat indices into
    ``labels.reshape(-1)`` (use ``modules.pixels.gather_pixels`` on ``[B, C, *spatial]`` features) and
    the labels there. Nothing valid -> two empty LongTensors. ``sampler`` defaults to uniform
    sampling (the paper's ``random=True``); any :class:`PixelSampler` can be plugged in.
    """
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    if valid.shape != labels.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(labels.shape)}, "
                         f"got {valid.dtype} {tuple(valid.shape)}")
    sampler = sampler if sampler is not None else UniformSampler()
    flat_labels = labels.reshape(-1).long()
    flat_valid = valid.reshape(-1)
    empty = torch.zeros(0, dtype=torch.long, device=labels.device)
    if n_per_class <= 0 or not bool(flat_valid.any()):
        return empty, empty.clone()
    classes = torch.unique(flat_labels[flat_valid])
    if len(classes) < 2:
        parts = [sampler(flat_valid, n_per_class, generator).index]
    else:  # a loop over classes (a handful), each draw vectorised
        parts = [sampler(flat_valid & (flat_labels == c), n_per_class, generator).index for c in classes]
    index = torch.cat(parts)
    return index, flat_labels[index]


def saacl_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, views: torch.Tensor,
               queue_features: torch.Tensor, queue_labels: torch.Tensor, class_centres: torch.Tensor,
               tau: float, lambda_a: float = 0.2) -> torch.Tensor:
    """SAACL (spec 4.5). All similarity math in fp32 with autocast off; every input is L2-normalised here.

    Args:
        anchors: ``[n, d]`` student features at the anchor pixels (carry the gradient).
        anchor_labels: ``[n]`` their classes, in ``[0, K)``.
        views: ``[n, d]`` teacher features at the same pixels (treated as constants).
        queue_features / queue_labels: ``[m, d]`` / ``[m]`` past teacher features (constants); ``m`` may
            be 0. Entries with a label no anchor has (e.g. -1) are negatives only.
        class_centres: ``[K, d]``, row c = the centre assigned to class c (constants), e.g.
            ``AdaptiveCentreAllocation.assigned_centres()``. All K rows are keys of every anchor.
        tau: temperature (ATS, ``schedules.cosine_temperature``).
        lambda_a: weight of the pull to the assigned centre; 0.2 in the paper (the 2D official
            script uses 0.1).
    Returns a scalar; with no anchors, ``anchors.sum() * 0`` (finite, keeps the graph).
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    n, d = anchors.shape
    if views.shape != anchors.shape:
        raise ValueError(f"views must match anchors {tuple(anchors.shape)}, got {tuple(views.shape)}")
    if anchor_labels.shape != (n,):
        raise ValueError(f"anchor_labels must be [{n}], got {tuple(anchor_labels.shape)}")
    if queue_features.dim() != 2 or queue_features.shape[1] != d or queue_labels.shape != queue_features.shape[:1]:
        raise ValueError(f"queue must be [m, {d}] with labels [m], got {tuple(queue_features.shape)} "
                         f"and {tuple(queue_labels.shape)}")
    if class_centres.dim() != 2 or class_centres.shape[1] != d or class_centres.shape[0] == 0:
        raise ValueError(f"class_centres must be [K, {d}] with K >= 1, got {tuple(class_centres.shape)}")
    if n == 0:
        return anchors.float().sum() * 0.0

    # Autocast off: under AMP the matmuls would otherwise run in fp16 despite the .float() (spec 11).
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        z = F.normalize(anchors.float(), dim=1)
        v = F.normalize(views.detach().float(), dim=1)
        q = F.normalize(queue_features.detach().float(), dim=1)
        c = F.normalize(class_centres.detach().float(), dim=1)
        labels = anchor_labels.long()

        # Per-anchor normaliser over the keys [own view | queue | K centres] (spec 4.5 "per-anchor normalised
        # similarity"), fp32; 1 / tau folded into the anchors. The [n, m] queue similarities are needed only
        # inside this log-sum-exp (``logsumexp_dot``: one matrix product in backward).
        z = z / float(tau)
        view_logit = (z * v).sum(1)                                                  # [n]
        centre_logits = z @ c.T                                                      # [n, K]
        parts = [view_logit, torch.logsumexp(centre_logits, dim=1), logsumexp_dot(z, q)]
        log_norm = torch.logsumexp(torch.stack(parts, dim=1), dim=1)                 # [n]

        # sum_{j in queue, label j = y_i} log s_ij = (z_i / tau) . (sum of those q_j) - count * log_norm_i:
        # per-class sums of the queue instead of an [n, m] same-class mask (same value and gradient,
        # a fraction of the time and memory: issue 11's demo budget).
        k = c.shape[0]
        queue_labels = queue_labels.to(labels.device).long()
        in_range = (queue_labels >= 0) & (queue_labels < k)      # other labels (e.g. -1): negatives only
        class_sums = torch.zeros(k, d, device=z.device, dtype=z.dtype).index_add_(0, queue_labels[in_range],
                                                                                  q[in_range])
        class_counts = torch.bincount(queue_labels[in_range], minlength=k).to(z.dtype)
        count = class_counts[labels]                                                 # [n]
        log_queue = (z * class_sums[labels]).sum(1) - count * log_norm
        log_view = view_logit - log_norm
        log_centre = centre_logits.gather(1, labels.unsqueeze(1)).squeeze(1) - log_norm   # nu_i = centre of y_i
        n_pos = 2.0 + count                                                          # |P_i|: view + queue + nu_i
        per_anchor = -(log_view + log_queue + lambda_a * log_centre) / n_pos
        return per_anchor.mean()
