"""Temperature and loss-weight schedules (pure functions of the training position)."""
import math
from typing import List, Optional, Sequence


def cosine_temperature(t: float, period: float, tau_min: float, tau_max: float) -> float:
    """ACTION++'s anatomical-aware temperature scheduler (ATS).

    ``tau(t) = tau_min + (tau_max - tau_min) * (1 + cos(2 pi t / period)) / 2``: it starts at
    ``tau_max``, reaches ``tau_min`` at half a period and returns to ``tau_max`` after one period.
    """
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    if not 0 < tau_min <= tau_max:
        raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
    return tau_min + (tau_max - tau_min) * (1.0 + math.cos(2.0 * math.pi * t / period)) / 2.0


def sigmoid_rampup(t: float, length: float) -> float:
    """Laine & Aila's ``exp(-5 (1 - t/length)^2)`` ramp from ~0 to 1 (mean teacher); 1 if length <= 0."""
    if length <= 0:
        return 1.0
    x = min(max(t, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


def linear_decay(t: float, length: float, start: float, end: float = 0.0) -> float:
    """Linear interpolation from ``start`` at t=0 to ``end`` at t=length (U2PL's entropy percentile)."""
    if length <= 0:
        return end
    x = min(max(t, 0.0), length) / length
    return start + (end - start) * x


def ramped_weight(step: int, start: Optional[int], length: float) -> float:
    """Multiplier of an unsupervised loss weight: 0 before ``start`` (or while ``start`` is None, i.e. the
    term has not been switched on yet), then :func:`sigmoid_rampup` counted from ``start`` (1 at once if
    ``length <= 0``)."""
    if start is None or step < start:
        return 0.0
    return sigmoid_rampup(step - start, length)


def classes_below(class_dice: Sequence[float], floor: float) -> list:
    """Foreground classes (1-based) whose online-validation Dice is below ``floor``; NaN (no evidence: the
    class was absent from the validation patches) is not below."""
    return [i + 1 for i, v in enumerate(class_dice) if float(v) < floor]


def recent_class_dice(history: Sequence[Sequence[float]], n: int) -> List[List[float]]:
    """Per foreground class, its last ``n`` finite online-validation Dice values (oldest first).

    nnU-Net's online Dice is NaN for a class absent from an epoch's validation patches: that epoch is no
    evidence for that class, neither for nor against it, so it is skipped for that class alone."""
    if not history:
        return []
    per_class: List[List[float]] = [[] for _ in history[-1]]
    for epoch in reversed(history):
        for c, v in enumerate(list(epoch)[: len(per_class)]):
            if len(per_class[c]) < n and math.isfinite(float(v)):
                per_class[c].append(float(v))
    return [values[::-1] for values in per_class]


def warmup_complete(step: int, min_steps: int, class_dice: Sequence[Sequence[float]], threshold: float,
                    epochs: int) -> bool:
    """The supervised warm-up rule: at least ``min_steps`` iterations done, and every foreground class has
    ``epochs`` pieces of evidence (:func:`recent_class_dice`), each at least ``threshold``."""
    if step < min_steps:
        return False
    recent = recent_class_dice(class_dice, epochs)
    return len(recent) > 0 and all(len(v) == epochs and min(v) >= threshold for v in recent)
