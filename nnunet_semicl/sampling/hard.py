"""Vectorised samplers for ReCo-style anatomical contrast (methods.md section 3.4).

* :func:`hard_query_mask`: the "hard" pixels of a class, i.e. valid pixels of class ``c`` that the
  student is not yet confident about (``prob[c] < threshold``). Queries are then drawn uniformly
  with replacement from this mask with :class:`~nnunet_semicl.sampling.uniform.UniformSampler`.
* :func:`sample_negative_classes`: categorical draws of negative class ids (the "anatomical
  relation graph": classes whose prototypes resemble the query's class are drawn more often).
* :func:`sample_pixels_of_classes`: for each requested class id, one uniformly random pixel of that
  class, with a sort + offsets + counts scheme (no Python loop over pixels or draws).

Indices follow the convention of ``sampling/base.py``: flat indices into ``mask.reshape(-1)`` of the
``[B, *spatial]`` grid, usable with ``modules.pixels.gather_pixels``.
"""
from typing import Optional

import torch

from nnunet_semicl.sampling.allocation import stable_group_order


def hard_query_mask(labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor, cls: int,
                    threshold: float) -> torch.Tensor:
    """Bool ``[B, *spatial]``: ``valid & (labels == cls) & (prob[:, cls] < threshold)``.

    Args:
        labels: long ``[B, *spatial]`` (values at invalid pixels are ignored).
        valid: bool ``[B, *spatial]``.
        prob: ``[B, K, *spatial]`` class probabilities (the student softmax, detached).
        cls: the class id.
        threshold: ReCo/ACTION's ``strong_threshold`` (0.97).
    """
    if labels.shape != valid.shape or prob.shape[0] != labels.shape[0] or prob.shape[2:] != labels.shape[1:]:
        raise ValueError(f"hard_query_mask: shapes do not match: labels {tuple(labels.shape)}, "
                         f"valid {tuple(valid.shape)}, prob {tuple(prob.shape)}")
    # fp32 comparison: in fp16 the threshold 0.97 would round to 0.9702
    return valid & (labels == cls) & (prob[:, cls].float() < threshold)


def sample_negative_classes(similarity_logits: torch.Tensor, n_queries: int, n_negatives: int,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Categorical draws from ``softmax(similarity_logits)``: long ``[n_queries, n_negatives]``.

    ``similarity_logits`` is ``[M]`` (one distribution shared by all queries) or ``[n_queries, M]``
    (one per query); the returned values are positions ``0..M-1`` along its last axis. Entries set
    to ``-inf`` are never drawn, so passing logits over *all* classes with the query's own class and
    the absent classes at ``-inf`` returns class ids directly. The softmax runs in fp32. Draws are
    i.i.d. with replacement (as ReCo). ``M == 0`` or all ``-inf`` rows are an error of the caller.
    """
    logits = similarity_logits.float()
    if logits.dim() not in (1, 2):
        raise ValueError(f"similarity_logits must be [M] or [n_queries, M], got {tuple(logits.shape)}")
    if n_queries <= 0 or n_negatives <= 0:
        return torch.zeros((max(n_queries, 0), max(n_negatives, 0)), dtype=torch.long, device=logits.device)
    if logits.shape[-1] == 0:
        raise ValueError("sample_negative_classes: no candidate class to draw from")
    probs = torch.softmax(logits, dim=-1)
    if logits.dim() == 1:
        # one shared distribution: a single multinomial call of n_queries * n_negatives draws
        draws = torch.multinomial(probs, n_queries * n_negatives, replacement=True, generator=generator)
        return draws.view(n_queries, n_negatives)
    if logits.shape[0] != n_queries:
        raise ValueError(f"similarity_logits has {logits.shape[0]} rows, expected n_queries={n_queries}")
    return torch.multinomial(probs, n_negatives, replacement=True, generator=generator)


def class_pixel_table(pixel_class_flat: torch.Tensor, num_classes: Optional[int] = None):
    """Pixels grouped by class: ``(sorted_index, offsets, counts)``.

    ``sorted_index`` holds the flat indices of all pixels with class ``>= 0``, grouped by class
    (ascending); class ``c`` occupies ``sorted_index[offsets[c] : offsets[c] + counts[c]]``.
    Negative entries of ``pixel_class_flat`` (e.g. -1) mark pixels that take no part.
    """
    pixel_class_flat = pixel_class_flat.reshape(-1)
    keep = (pixel_class_flat >= 0).nonzero(as_tuple=True)[0]
    cls = pixel_class_flat[keep].long()
    if num_classes is None:
        num_classes = int(cls.max().item()) + 1 if cls.numel() else 0
    counts = torch.bincount(cls, minlength=num_classes)
    order = stable_group_order(cls)   # = argsort(cls, stable=True), cheaper on raster-ordered class runs
    sorted_index = keep[order]
    offsets = torch.cumsum(counts, 0) - counts
    return sorted_index, offsets, counts


def sample_pixels_of_classes(pixel_class_flat: torch.Tensor, class_ids: torch.Tensor,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """For every entry of ``class_ids``, a uniformly random flat pixel index of that class.

    Args:
        pixel_class_flat: long ``[P]`` (or any shape, flattened): the class of each pixel, negative
            for pixels that must never be drawn (invalid / ignored).
        class_ids: long tensor of any shape: the requested classes.
        generator: optional ``torch.Generator`` on the tensors' device.

    Returns:
        long tensor shaped like ``class_ids``: flat indices into ``pixel_class_flat.reshape(-1)``.
        Draws are independent and with replacement. A requested class with no pixel gets ``-1``
        (callers only request classes that are present; checking would cost a device sync).
    """
    device = pixel_class_flat.device
    class_ids = class_ids.long()
    if class_ids.numel() == 0:
        return torch.zeros_like(class_ids)
    num_classes = int(max(int(class_ids.max().item()), int(pixel_class_flat.max().item()) if pixel_class_flat.numel() else -1)) + 1
    sorted_index, offsets, counts = class_pixel_table(pixel_class_flat, num_classes)
    safe_ids = class_ids.clamp(min=0)
    n = counts[safe_ids]
    # uniform integer in [0, n): float64 keeps floor(u * n) uniform for any realistic pixel count
    u = torch.rand(class_ids.shape, generator=generator, device=device, dtype=torch.float64)
    r = torch.minimum((u * n.to(torch.float64)).long(), (n - 1).clamp(min=0))
    pos = (offsets[safe_ids] + r).clamp(max=max(sorted_index.numel() - 1, 0))
    if sorted_index.numel() == 0:
        return torch.full_like(class_ids, -1)
    out = sorted_index[pos]
    return torch.where((n > 0) & (class_ids >= 0), out, torch.full_like(out, -1))
