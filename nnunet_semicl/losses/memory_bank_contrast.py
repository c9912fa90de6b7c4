"""U2PL-style pixel contrast with per-class memory banks of negatives (MONA/ARCO "tailness", methods.md 5.3a).

For every class c (background included):

1. **Entropy split.** On unlabeled images, pixels in the lowest ``alpha`` percent of entropy are
   *reliable*, those in the highest ``alpha`` percent *unreliable*; every (valid) labeled pixel is
   both. ``alpha`` follows ``schedules.linear_decay`` (20 -> 0 over training), applied by the trainer;
   the entropy source is the caller's choice (the released MONA/ARCO code: the student's prediction
   on the strong view).
2. **Anchors.** Reliable pixels labelled (ground truth / pseudo-label) c whose teacher probability
   for c exceeds ``anchor_threshold`` (0.3); ``num_anchors`` (256) drawn by the sampler (uniform:
   MONA; SG/SAG: ARCO) from the ``[B, *spatial]`` mask. Student features, with gradient.
3. **Positive.** The mean teacher feature over the reliable class-c pixels (a constant).
4. **Negatives.** Teacher features of unreliable pixels are enqueued into class c's bank under
   ``negative_rule``:

   * ``'intended'`` (default, the U2PL paper): teacher probability for c below
     ``negative_threshold`` (0.97), and either a labeled pixel whose ground truth is not c while c is
     among the teacher's top ``low_rank`` (3) classes, or an unlabeled pixel where c is ranked
     ``low_rank + 1``-th to ``high_rank``-th (4th-20th) by the teacher;
   * ``'as_released'``: the same conditions *and* the pixel's (pseudo-)label is c, as the released
     code computes it. Labeled negatives are then always empty, unlabeled ones need a pseudo-label c
     that the teacher ranks 4th or lower, and a 2-class problem never fills the bank.

   The current batch is enqueued first, then ``num_anchors x num_negatives`` (256 x 512) negatives
   are drawn from the bank with the sampler over the 1-D bank index range (insertion order).
5. **Loss.** Cross-entropy over ``[positive, negatives]`` of cosine similarities / ``temperature``
   (0.5), positive at index 0; the mean over the classes that have anchors and a non-empty bank.
   No such class gives a zero that keeps the graph.

Sampler weights (:mod:`nnunet_semicl.sampling.base`) are used so that the stratified estimators stay
unbiased: the anchor losses are averaged with the anchor weights, and each negative's exp-similarity
is scaled by ``(number of draws) x weight`` so that every row's negative sum estimates ``num_negatives``
times the bank mean. Uniform sampling gives weights 1/n and reduces both to the plain U2PL loss.

All similarity maths runs in fp32 (fp64 inputs stay fp64, for gradcheck) with autocast off.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet_semicl.losses.numerics import at_least_fp32, zero_with_graph
from nnunet_semicl.losses.similarity import gather_dot
from nnunet_semicl.modules.memory_bank import ClassMemoryBank
from nnunet_semicl.sampling.base import PixelSampler
from nnunet_semicl.sampling.uniform import UniformSampler

NEGATIVE_RULES = ("intended", "as_released")


def pixel_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy ``-sum p log p`` over the class axis (fp32, 0 log 0 = 0)."""
    p = at_least_fp32(probs.detach())
    return -torch.special.xlogy(p, p).sum(dim)


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``q``-th percentile (0..100) of all entries with linear interpolation (numpy's default).

    Uses ``kthvalue`` rather than ``torch.quantile``, which refuses inputs above 2^24 elements (a 3D
    batch easily has more voxels).
    """
    x = x.reshape(-1)
    n = x.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = min(max(float(q), 0.0), 100.0) / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo = torch.kthvalue(x, lo + 1).values
    v_hi = torch.kthvalue(x, hi + 1).values if hi != lo else v_lo
    return v_lo + (v_hi - v_lo) * (pos - lo)


@torch.no_grad()
def reliability_masks(entropy: torch.Tensor, is_labeled: torch.Tensor, alpha: float,
                      valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(reliable, unreliable)`` bool ``[B, *spatial]`` masks (section 5.3a).

    The percentiles are taken over the valid pixels of the unlabeled images: reliable = entropy at
    or below the ``alpha``-th percentile, unreliable = at or above the ``(100 - alpha)``-th; valid
    labeled pixels are in both.
    """
    b = entropy.shape[0]
    labeled = is_labeled.to(device=entropy.device, dtype=torch.bool).view(b, *([1] * (entropy.ndim - 1)))
    labeled = labeled.expand_as(entropy)
    if valid is None:
        valid = torch.ones_like(entropy, dtype=torch.bool)
    lab = labeled & valid
    unl = ~labeled & valid
    reliable, unreliable = lab.clone(), lab.clone()
    if bool(unl.any()):
        e = at_least_fp32(entropy)
        values = e[unl]
        reliable |= unl & (e <= percentile(values, alpha))
        unreliable |= unl & (e >= percentile(values, 100.0 - alpha))
    return reliable, unreliable


@torch.no_grad()
def class_ranks(probs: torch.Tensor) -> torch.Tensor:
    """Rank (0 = most probable) of every class at every pixel: long ``[B, K, *spatial]``; ties by class index."""
    order = torch.argsort(probs, dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1, stable=True)


@torch.no_grad()
def negative_mask(c: int, labels: torch.Tensor, is_labeled: torch.Tensor, probs: torch.Tensor,
                  ranks: torch.Tensor, unreliable: torch.Tensor, rule: str = "intended",
                  negative_threshold: float = 0.97, low_rank: int = 3, high_rank: int = 20) -> torch.Tensor:
    """Pixels whose teacher feature is enqueued as a negative for class ``c``: bool ``[B, *spatial]``."""
    if rule not in NEGATIVE_RULES:
        raise ValueError(f"negative_rule must be one of {NEGATIVE_RULES}, got {rule!r}")
    b = labels.shape[0]
    labeled = is_labeled.to(device=labels.device, dtype=torch.bool).view(b, *([1] * (labels.ndim - 1)))
    rank_c = ranks[:, c]
    labeled_rule = labeled & (rank_c < low_rank) & (labels != c)
    unlabeled_rule = ~labeled & (rank_c >= low_rank) & (rank_c < high_rank)
    mask = unreliable & (probs[:, c] < negative_threshold) & (labeled_rule | unlabeled_rule)
    if rule == "as_released":
        mask = mask & (labels == c)  # the candidate mask is the label's one-hot channel c x unreliable
    return mask


def memory_bank_contrast_from_indices(anchors: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor,
                                      negative_index: torch.Tensor, temperature: float = 0.5,
                                      anchor_weight: Optional[torch.Tensor] = None,
                                      negative_weight: Optional[torch.Tensor] = None,
                                      anchor_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One class's loss for already-drawn anchors and negatives (the deterministic part).

    Args:
        anchors: ``[A, D]`` student features (with gradient); with ``anchor_rows``, ``[U, D]``: each distinct
            drawn pixel once.
        positive: ``[D]`` the class prototype (constant).
        bank: ``[M, D]`` the class's memory bank (constant).
        negative_index: long ``[A, N]``: rows of ``bank`` that are each anchor's negatives.
        temperature: 0.5.
        anchor_weight: ``[A]`` sampler weights of the anchors (normalised here); None = equal.
        negative_weight: ``[A, N]`` sampler weights of the negatives, summing to 1 over all A x N
            draws; None = equal. Each negative's term exp(s/tau) is multiplied by ``A N w``.
        anchor_rows: long ``[A]``, optional: the row of ``anchors`` each drawn anchor is (anchors drawn with
            replacement recur; the bank product is then ``U x M`` instead of ``A x M``).

    Returns the 0-d weighted mean over anchors of
    ``-log( e^{s_p} / (e^{s_p} + sum_j A N w_j e^{s_j}) )`` with ``s = cos / temperature``.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        q = F.normalize(at_least_fp32(anchors), dim=-1)
        rows = torch.arange(q.shape[0], device=q.device) if anchor_rows is None else anchor_rows
        p = F.normalize(positive.detach().to(q.dtype), dim=-1)
        pos_logit = (q @ p)[rows].unsqueeze(1) / temperature                         # [A, 1]
        # cosine to the drawn bank rows without copying or normalising the whole bank (up to 50k x D)
        norms = torch.linalg.vector_norm(bank.detach(), dim=1, dtype=q.dtype).clamp_min(1e-12)
        neg_logit = gather_dot(q, bank, negative_index, rows=rows) / norms[negative_index] / temperature  # [A, N]
        if negative_weight is not None:
            w = negative_weight.detach().to(q.dtype)
            neg_logit = neg_logit + torch.log(w * w.numel())
        logits = torch.cat([pos_logit, neg_logit], dim=1)
        per_anchor = torch.logsumexp(logits, dim=1) - logits[:, 0]
        if anchor_weight is None:
            return per_anchor.mean()
        aw = anchor_weight.detach().to(q.dtype)
        return (per_anchor * aw).sum() / aw.sum()


def memory_bank_contrast_loss(student_rep: torch.Tensor, teacher_rep: torch.Tensor, labels: torch.Tensor,
                              is_labeled: torch.Tensor, teacher_probs: torch.Tensor, entropy: torch.Tensor,
                              alpha: float, bank: ClassMemoryBank, sampler: Optional[PixelSampler] = None,
                              generator: Optional[torch.Generator] = None, valid: Optional[torch.Tensor] = None,
                              num_anchors: int = 256, num_negatives: int = 512, temperature: float = 0.5,
                              anchor_threshold: float = 0.3, negative_threshold: float = 0.97,
                              low_rank: int = 3, high_rank: int = 20, negative_rule: str = "intended",
                              negative_sampler: Optional[PixelSampler] = None, update_bank: bool = True,
                              gather: bool = False, use_weights: bool = True,
                              stats: Optional[Dict] = None) -> torch.Tensor:
    """U2PL/MONA/ARCO memory-bank contrast (section 5.3a); 0-d tensor.

    Args:
        student_rep: ``[B, D, *spatial]`` student representation (with gradient).
        teacher_rep: ``[B, D, *spatial]`` teacher representation (used detached).
        labels: long ``[B, *spatial]``: ground truth on labeled images, teacher pseudo-labels on
            unlabeled ones.
        is_labeled: bool ``[B]``.
        teacher_probs: ``[B, K, *spatial]`` teacher softmax (used detached).
        entropy: ``[B, *spatial]`` per-pixel entropy for the reliable/unreliable split (see
            :func:`pixel_entropy`); only its unlabeled rows are used.
        alpha: entropy percentile in [0, 100] (``linear_decay(progress, 1, 20, 0)``).
        bank: the per-class negative banks (updated in place when ``update_bank``).
        sampler: anchor sampler (default uniform = MONA; ARCO: ``StratifiedSampler``).
        generator: optional ``torch.Generator`` on the representation's device.
        valid: bool ``[B, *spatial]``: pixels that take part (e.g. inside the warp, not ignore);
            labels outside ``[0, K)`` are excluded as well.
        num_anchors / num_negatives / temperature: 256 / 512 / 0.5.
        anchor_threshold / negative_threshold: 0.3 / 0.97.
        low_rank / high_rank: 3 / 20 (top-3 on labeled pixels, ranks 4-20 on unlabeled ones).
        negative_rule: ``'intended'`` (default) or ``'as_released'``.
        negative_sampler: sampler over the bank's index range (default: ``sampler``).
        update_bank: enqueue this batch's negatives before drawing.
        gather: under torch.distributed, enqueue the negatives of all ranks.
        use_weights: use the sampler weights (see module doc); False = plain means.
        stats: optional dict, filled with ``valid_classes`` and ``enqueued`` (per class).
    """
    if negative_rule not in NEGATIVE_RULES:
        raise ValueError(f"negative_rule must be one of {NEGATIVE_RULES}, got {negative_rule!r}")
    b, d = student_rep.shape[:2]
    num_classes = teacher_probs.shape[1]
    spatial = tuple(student_rep.shape[2:])
    if tuple(teacher_rep.shape) != tuple(student_rep.shape) or tuple(labels.shape) != (b, *spatial) \
            or tuple(teacher_probs.shape) != (b, num_classes, *spatial) or tuple(entropy.shape) != (b, *spatial):
        raise ValueError(f"memory_bank_contrast_loss: shapes do not match: student {tuple(student_rep.shape)}, "
                         f"teacher {tuple(teacher_rep.shape)}, labels {tuple(labels.shape)}, probs "
                         f"{tuple(teacher_probs.shape)}, entropy {tuple(entropy.shape)}")
    if bank.num_classes != num_classes or bank.dim != d:
        raise ValueError(f"bank has {bank.num_classes} classes x {bank.dim} dims, expected {num_classes} x {d}")
    sampler = sampler if sampler is not None else UniformSampler()
    negative_sampler = negative_sampler if negative_sampler is not None else sampler
    device = student_rep.device
    labels = labels.long()
    valid = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.bool()
    valid = valid & (labels >= 0) & (labels < num_classes)
    probs = at_least_fp32(teacher_probs.detach())
    teacher_flat = at_least_fp32(teacher_rep.detach()).movedim(1, -1).reshape(-1, d)
    student_flat = student_rep.movedim(1, -1).reshape(-1, d)

    reliable, unreliable = reliability_masks(entropy.detach(), is_labeled, alpha, valid)
    ranks = class_ranks(probs)

    enqueued = []
    if update_bank:
        for c in range(num_classes):
            neg = negative_mask(c, labels, is_labeled, probs, ranks, unreliable, negative_rule,
                                negative_threshold, low_rank, high_rank)
            feats = teacher_flat[neg.reshape(-1)]
            enqueued.append(int(feats.shape[0]))
            if gather or feats.shape[0] > 0:
                bank.push_class(c, feats, gather=gather)

    draws = []
    for c in range(num_classes):
        pos_mask = reliable & (labels == c)
        anchor_mask = pos_mask & (probs[:, c] > anchor_threshold)
        if not bool(anchor_mask.any()):
            continue
        negatives, oldest = bank.storage(c)   # storage order, no copy
        if negatives.shape[0] == 0:
            continue
        positive = teacher_flat[pos_mask.reshape(-1)].mean(0)
        a = sampler(anchor_mask, num_anchors, generator)
        n_a = a.index.numel()
        # samplers work in insertion order (the index strata depend on it); map to storage positions
        bank_mask = torch.ones(negatives.shape[0], dtype=torch.bool, device=device)
        ns = negative_sampler(bank_mask, n_a * num_negatives, generator)
        rows = (ns.index + oldest) % negatives.shape[0]
        draws.append((a, positive, negatives, rows.view(n_a, num_negatives), ns.weight.view(n_a, num_negatives)))

    losses = []
    if draws:
        # each distinct anchor pixel once (drawn with replacement, they recur), and every class's in one gather:
        # one [pixels, D] gradient buffer in backward, not one per class
        distinct = [torch.unique(a.index, return_inverse=True) for a, *_ in draws]
        anchors = student_flat[torch.cat([pixels for pixels, _ in distinct])].split([len(p) for p, _ in distinct])
        for anchors_c, (_, anchor_rows), draw in zip(anchors, distinct, draws):
            a, positive, negatives, rows, negative_weight = draw
            losses.append(memory_bank_contrast_from_indices(
                anchors_c, positive, negatives, rows, temperature, a.weight if use_weights else None,
                negative_weight if use_weights else None, anchor_rows=anchor_rows))

    if stats is not None:
        stats["valid_classes"] = len(losses)
        stats["enqueued"] = enqueued
    if not losses:
        return zero_with_graph(student_rep)
    return torch.stack(losses).mean()
