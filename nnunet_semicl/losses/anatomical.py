"""ReCo-style anatomical contrast ("AnCo", ACTION stage iii, methods.md section 3.4).

For every class c present among the valid pixels (ground truth on labeled images, confident
teacher pseudo-labels on unlabeled ones; the caller decides which pixels are valid):

1. prototype r_c = mean representation of the valid class-c pixels, a constant key;
2. hard queries: valid class-c pixels whose student probability for c is below ``strong_threshold``,
   ``num_queries`` drawn uniformly with replacement (the class is skipped when there is none);
3. for each query, ``num_negatives`` negative classes drawn from softmax_j(cos(r_c, r_j) / tau) over
   the other present classes, and for each drawn class one uniformly random valid pixel of it;
4. per-class loss = cross-entropy over [positive | negatives] of cos(query, key) / tau with the
   positive (the prototype) at index 0; the result is the mean over the classes that contributed.

Keys (prototypes and negatives) carry no gradient, as in ReCo; the gradient reaches the
representation through the queries only. All similarity maths runs in fp32 (fp64 inputs stay
fp64, for gradcheck) with autocast off.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet_semicl.losses.numerics import at_least_fp32, zero_with_graph
from nnunet_semicl.losses.similarity import gather_dot
from nnunet_semicl.sampling.hard import hard_query_mask, sample_negative_classes, sample_pixels_of_classes
from nnunet_semicl.sampling.uniform import UniformSampler


@torch.no_grad()
def class_prototypes(rep: torch.Tensor, pixel_class: torch.Tensor, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean representation per class: ``([K, D] fp32 (fp64 for fp64 rep), counts [K] long)``; no gradient.

    ``pixel_class`` is long ``[B, *spatial]`` with the class of each pixel and a negative value for
    pixels that take no part. Absent classes get a zero prototype and count 0.
    """
    d = rep.shape[1]
    feats = at_least_fp32(rep.detach()).movedim(1, -1).reshape(-1, d)   # [P, D] (a view for a pixel-major map)
    # pixels that take no part are summed into an extra row K, which is dropped: no copy of the valid pixels
    cls = pixel_class.reshape(-1).long()
    cls = torch.where(cls >= 0, cls, torch.full_like(cls, num_classes))
    sums = torch.zeros(num_classes + 1, d, device=rep.device, dtype=feats.dtype).index_add_(0, cls, feats)
    counts = torch.bincount(cls, minlength=num_classes + 1)[:num_classes]
    return sums[:num_classes] / counts.clamp(min=1).unsqueeze(1).to(feats.dtype), counts


def anatomical_contrast_from_indices(rep: torch.Tensor, prototypes: torch.Tensor, classes: torch.Tensor,
                                     query_index: torch.Tensor, negative_index: torch.Tensor,
                                     tau: float = 0.5) -> torch.Tensor:
    """The loss for already-drawn queries and negatives (the deterministic part).

    Args:
        rep: ``[B, D, *spatial]`` representation (with gradient).
        prototypes: ``[K, D]`` class prototypes (constants).
        classes: long ``[M]``: the contributing classes.
        query_index: long ``[M, Q]``: flat indices into the ``[B, *spatial]`` grid of each class's queries.
        negative_index: long ``[M, Q, N]``: flat indices of each query's negative keys.
        tau: temperature (0.5).

    Returns:
        0-d fp32: mean over the M classes of the mean over Q queries of
        ``-log softmax([cos(q, r_c), cos(q, k_1), ..., cos(q, k_N)] / tau)[0]``; a zero keeping the
        graph when ``M == 0``.
    """
    m = int(classes.numel())
    if m == 0 or query_index.numel() == 0:
        return zero_with_graph(rep)
    if query_index.shape[0] != m or negative_index.shape[:2] != query_index.shape:
        raise ValueError(f"index shapes do not match: classes {m}, queries {tuple(query_index.shape)}, "
                         f"negatives {tuple(negative_index.shape)}")
    q_per = query_index.shape[1]
    with torch.autocast(device_type=rep.device.type, enabled=False):
        d = rep.shape[1]
        flat = at_least_fp32(rep).movedim(1, -1).reshape(-1, d)                  # [P, D] P = B*prod(spatial)
        table = F.normalize(flat.detach(), dim=-1)                                 # constant keys
        # queries are drawn with replacement: each distinct pixel is normalised and multiplied once
        pixels, rows = torch.unique(query_index.reshape(-1), return_inverse=True)
        q_distinct = F.normalize(flat[pixels], dim=-1)                             # with gradient
        q = q_distinct[rows].view(m, q_per, d)
        pos = F.normalize(prototypes.detach().to(flat.dtype)[classes], dim=-1)     # [M, D]
        pos_logit = (q * pos.unsqueeze(1)).sum(-1, keepdim=True)                   # [M, Q, 1]
        # negatives: only the Q x N drawn products, never the [M, Q, N, D] gathered keys (1 GB at D=512)
        neg_logit = gather_dot(q_distinct, table, negative_index.reshape(m * q_per, -1),
                               rows=rows).view(m, q_per, -1)                       # [M, Q, N]
        logits = torch.cat([pos_logit, neg_logit], dim=-1) / tau
        # cross-entropy with the positive at index 0; equal Q per class, so the global mean is the
        # mean over classes of the per-class means
        return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean()


def draw_anatomical_samples(labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor, prototypes: torch.Tensor,
                            counts: torch.Tensor, strong_threshold: float = 0.97, tau: float = 0.5,
                            num_queries: int = 256, num_negatives: int = 512,
                            generator: Optional[torch.Generator] = None):
    """The random part: ``(classes [M], query_index [M, Q], negative_index [M, Q, N])``.

    ``valid`` must already exclude pixels whose label is out of range. Only present classes
    (``counts > 0``) with at least one hard query contribute.
    """
    device = labels.device
    pixel_class = torch.where(valid, labels, torch.full_like(labels, -1))
    present = counts > 0
    present_ids: List[int] = present.nonzero(as_tuple=True)[0].tolist()
    with torch.autocast(device_type=labels.device.type, enabled=False):
        proto_n = F.normalize(at_least_fp32(prototypes), dim=-1)
        class_logits = (proto_n @ proto_n.t()) / tau                                 # [K, K] fp32
    sampler = UniformSampler()
    classes, queries, neg_classes = [], [], []
    for c in present_ids:
        hard = hard_query_mask(labels, valid, prob, c, strong_threshold)
        draw = sampler(hard, num_queries, generator)
        if draw.index.numel() == 0:
            continue
        others = present.clone()
        others[c] = False
        logits = class_logits[c].masked_fill(~others, float("-inf"))
        classes.append(c)
        queries.append(draw.index)
        neg_classes.append(sample_negative_classes(logits, num_queries, num_negatives, generator))
    if not classes:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.view(0, num_queries), empty.view(0, num_queries, num_negatives)
    neg_classes_t = torch.stack(neg_classes)                                          # [M, Q, N]
    negative_index = sample_pixels_of_classes(pixel_class.reshape(-1), neg_classes_t, generator)
    return (torch.tensor(classes, dtype=torch.long, device=device), torch.stack(queries), negative_index)


def anatomical_contrast_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor,
                             strong_threshold: float = 0.97, tau: float = 0.5, num_queries: int = 256,
                             num_negatives: int = 512, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ReCo/ACTION anatomical contrast; 0-d fp32 tensor.

    Args:
        rep: ``[B, D, *spatial]`` student representation (with gradient).
        labels: long ``[B, *spatial]``: ground truth on labeled rows, teacher pseudo-labels on
            unlabeled rows.
        valid: bool ``[B, *spatial]``: the pixels that take part (labels outside ``[0, K)`` are
            excluded as well, e.g. an ignore label).
        prob: ``[B, K, *spatial]`` student softmax at the same resolution (used detached).
        strong_threshold: hard-query threshold theta_s (0.97).
        tau: temperature of both the negative-class distribution and the contrast (0.5).
        num_queries / num_negatives: 256 / 512 (paper).
        generator: optional ``torch.Generator`` on rep's device, for reproducible draws.

    Returns a zero that keeps the graph when fewer than two classes are present or no class has a
    hard query.
    """
    if labels.shape != valid.shape or rep.shape[0] != labels.shape[0] or rep.shape[2:] != labels.shape[1:] \
            or prob.shape[0] != labels.shape[0] or prob.shape[2:] != labels.shape[1:]:
        raise ValueError(f"anatomical_contrast_loss: shapes do not match: rep {tuple(rep.shape)}, labels "
                         f"{tuple(labels.shape)}, valid {tuple(valid.shape)}, prob {tuple(prob.shape)}")
    num_classes = prob.shape[1]
    labels = labels.long()
    valid = valid.bool() & (labels >= 0) & (labels < num_classes)
    prob = prob.detach()
    pixel_class = torch.where(valid, labels, torch.full_like(labels, -1))
    prototypes, counts = class_prototypes(rep, pixel_class, num_classes)
    if int((counts > 0).sum().item()) < 2:
        return zero_with_graph(rep)
    classes, query_index, negative_index = draw_anatomical_samples(
        labels, valid, prob, prototypes, counts, strong_threshold, tau, num_queries, num_negatives, generator)
    return anatomical_contrast_from_indices(rep, prototypes, classes, query_index, negative_index, tau)
