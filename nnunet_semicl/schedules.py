"""Temperature and loss-weight schedules: pure functions of the training position, and the schedule of the
unsupervised terms (:class:`UnsupervisedSchedule`: warm-up gate, ramp, momentum, with its own state)."""
import math
from dataclasses import dataclass, field
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


@dataclass
class GateDecision:
    """What one :meth:`UnsupervisedSchedule.update` found (classes are 1-based foreground classes)."""
    opened: bool = False          # the gate opened now ...
    by_limit: bool = False        # ... at the warm-up's limit rather than by the rule
    extended: bool = False        # past the limit, held for classes not found yet (reported once)
    recent: List[List[float]] = field(default_factory=list)   # per class, its recent evidence
    below: List[int] = field(default_factory=list)            # below the threshold in that evidence
    not_found: List[int] = field(default_factory=list)        # latest evidence below the floor
    no_evidence: List[int] = field(default_factory=list)      # absent from every online validation so far


@dataclass
class UnsupervisedSchedule:
    """When the unsupervised terms turn on and how much they weigh (methods.md decision 7): the supervised
    warm-up gate, the sigmoid ramp of every unsupervised weight, and the SGD momentum while they are on.

    The hyperparameters are the trainer's (``TrainingDynamicsMixin``: class attributes, setting keys); the state
    is the iteration at which the gate opened, saved in checkpoints (``state_dict``) so ``--c`` never repeats the
    warm-up. Pure Python: no torch, no nnU-Net."""
    total_iterations: int
    warmup: bool = True               # False: the gate is open from iteration 0 (the papers' recipe)
    min_fraction: float = 0.1
    dice_threshold: float = 0.5
    dice_epochs: int = 2
    max_fraction: float = 0.5
    limit_floor: float = 0.1
    rampup_fraction: float = 0.2
    momentum: Optional[float] = None  # SGD momentum while the terms are on; None: the optimizer's own
    gate_step: Optional[int] = None
    extension_reported: bool = False

    def __post_init__(self):
        if not self.warmup and self.gate_step is None:
            self.gate_step = 0

    @property
    def rampup_length(self) -> float:
        return self.rampup_fraction * self.total_iterations

    def scale(self, step: int, term_start: int = 0) -> float:
        """Multiplier of a term its method turns on at ``term_start``: 0 before that and until the gate opens,
        then the sigmoid ramp counted from the later of the two."""
        start = None if self.gate_step is None else max(self.gate_step, term_start)
        return ramped_weight(step, start, self.rampup_length)

    def momentum_now(self, terms_on: bool, initial: float) -> Optional[float]:
        """The SGD momentum for this iteration, or None to leave the optimizer as it is."""
        if self.momentum is None:
            return None
        return self.momentum if terms_on else initial

    def update(self, step: int, history: Sequence[Sequence[float]]) -> GateDecision:
        """After an epoch's online validation (``history``: per-class online Dice of every epoch so far): open the
        gate when the rule holds, or at the limit once every class with evidence is found."""
        recent = recent_class_dice(history, self.dice_epochs)
        decision = GateDecision(recent=recent, no_evidence=[c + 1 for c, v in enumerate(recent) if not v])
        if self.gate_step is not None:
            return decision
        if warmup_complete(step, int(self.min_fraction * self.total_iterations), history, self.dice_threshold,
                           self.dice_epochs):
            self.gate_step, decision.opened = step, True
        elif step >= int(self.max_fraction * self.total_iterations):
            latest = [v[-1] if v else float("nan") for v in recent]
            decision.not_found = classes_below(latest, self.limit_floor)
            if decision.not_found:
                decision.extended = not self.extension_reported
                self.extension_reported = True
                return decision
            self.gate_step, decision.opened, decision.by_limit = step, True, True
            decision.below = sorted(c + 1 for c, v in enumerate(recent) if v and min(v) < self.dice_threshold)
        return decision

    def state_dict(self) -> dict:
        return {"gate_step": self.gate_step, "extension_reported": self.extension_reported}

    def load_state_dict(self, state: dict) -> None:
        gate = state.get("gate_step")
        self.gate_step = None if gate is None else int(gate)
        self.extension_reported = bool(state.get("extension_reported", False))
