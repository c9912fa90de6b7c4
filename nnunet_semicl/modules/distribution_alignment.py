"""Class-collapse guard: distribution alignment of the teacher's probabilities (ReMixMatch-style).

A class that a young teacher predicts a little less often than it occurs gets a little less of the
confident pseudo-labels, the student learns to predict it less, the teacher (its EMA) follows:
the class collapses, and its own pseudo-labels keep it out. None of the four papers guards
against this. Distribution alignment multiplies the teacher's class probabilities by
``target / running_mean`` and renormalises, where ``target`` is the class distribution of the
labeled data and ``running_mean`` an EMA of the teacher's class distribution on unlabeled pixels.
A vanishing class is pushed back up, where the teacher still gives it some probability.

Two forms; the caller chooses (no default here, so the trainers' choice is the only one):

* ``statistic="probability", boost_only=False``: ReMixMatch's form (running mean of the teacher's
  probabilities, ratios in ``[1 / max_ratio, max_ratio]``). **The trainers' default**
  (``TrainingDynamicsMixin.alignment_statistic = "probability"``), the configuration of the ACDC runs in
  docs/performance.md section 3. Its known cost: soft probabilities spread over boundaries, so the mean
  foreground probability exceeds the labeled share even when the argmax matches it. Measured on a young
  ACDC teacher, the ratios were 0.78 / 0.71 / 0.56, which pushed the least confident class (MYO, 99th
  percentile confidence 0.973) below the 0.97 pseudo-label threshold; 1-2 % background leakage gives the
  small classes ratios of 0.45-0.8.
* ``statistic="argmax", boost_only=True``: the running distribution of the teacher's argmax, and only
  under-predicted foreground classes are raised (ratios clipped to ``[1, max_ratio]``, background never
  changed): the setting ``alignment_statistic="argmax" alignment_boost_only=true``.

Which form (or none: ``distribution_alignment=false``) is best is being measured single-factor with paired
seeds (docs/performance.md, "class-collapse guard"); the default changes only by that measurement.
"""
from typing import Optional, Sequence

import torch
from torch import nn


class DistributionAlignment(nn.Module):
    """Aligns per-pixel class probabilities ``[B, K, *spatial]`` to a target class distribution.

    Args:
        num_classes: K (background included).
        target: the class shares of the labeled data (normalised here); ``None``: uniform until
            :meth:`set_target` is called.
        momentum: EMA momentum of the running mean of the teacher's probabilities.
        max_ratio: bound on each class's multiplier (and its inverse): a class the teacher never
            predicts cannot be made to dominate the pseudo-labels.
        statistic: ``"argmax"``: running share of the teacher's argmax; ``"probability"``: running
            mean of its probabilities (ReMixMatch).
        boost_only: raise under-predicted foreground classes only; class 0 (background) and
            over-predicted classes keep ratio 1.
    """

    def __init__(self, num_classes: int, target: Optional[Sequence[float]] = None, momentum: float = 0.99,
                 max_ratio: float = 4.0, *, statistic: str, boost_only: bool):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if max_ratio < 1.0:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        if statistic not in ("argmax", "probability"):
            raise ValueError(f"statistic must be 'argmax' or 'probability', got {statistic!r}")
        self.statistic = statistic
        self.boost_only = bool(boost_only)
        self.momentum = float(momentum)
        self.max_ratio = float(max_ratio)
        self.register_buffer("target", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("running_mean", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        if target is not None:
            self.set_target(target)

    def set_target(self, target) -> None:
        t = torch.as_tensor(target, dtype=torch.float32, device=self.target.device).clamp_min(0)
        if t.shape != self.target.shape or float(t.sum()) <= 0:
            raise ValueError(f"target must hold {self.target.numel()} non-negative shares with a positive sum, "
                             f"got {target}")
        self.target.copy_(t / t.sum())

    @torch.no_grad()
    def update(self, probs: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Add the class distribution of a batch (``valid``: pixels that count) to the running mean."""
        if self.statistic == "argmax":
            onehot = nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).movedim(-1, 1)
            mean = class_mean(onehot, valid)
        else:
            mean = class_mean(probs, valid)
        if mean is None:
            return
        if not bool(self.initialised):
            self.running_mean.copy_(mean)
            self.initialised.fill_(True)
        else:
            self.running_mean.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)

    def ratios(self) -> torch.Tensor:
        r = self.target / self.running_mean.clamp_min(1e-8)
        if not self.boost_only:
            return r.clamp(1.0 / self.max_ratio, self.max_ratio)
        r = r.clamp(1.0, self.max_ratio)
        r[0] = 1.0
        return r

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """Aligned probabilities (fp32), same shape; unchanged before the first :meth:`update`."""
        probs = probs.float()
        if not bool(self.initialised):
            return probs
        shape = (1, -1) + (1,) * (probs.ndim - 2)
        aligned = probs * self.ratios().view(shape)
        return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(1e-12)


def class_mean(probs: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Mean of ``[B, K, *spatial]`` probabilities over the (valid) pixels: ``[K]``, or None if none is valid."""
    k = probs.shape[1]
    flat = probs.float().movedim(1, -1).reshape(-1, k)
    if valid is not None:
        flat = flat[valid.reshape(-1)]
    if flat.shape[0] == 0:
        return None
    return flat.mean(dim=0)


def label_shares(labels: torch.Tensor, num_classes: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Share of each class among the (masked) pixels of an integer map: ``[num_classes]`` (zeros if none)."""
    flat = labels.reshape(-1).long()
    if mask is not None:
        flat = flat[mask.reshape(-1)]
    flat = flat[(flat >= 0) & (flat < num_classes)]   # an ignore label is no class
    counts = torch.bincount(flat, minlength=num_classes).float()
    return counts / counts.sum().clamp_min(1.0)
