"""The training dynamics of every semi-supervised trainer: unsupervised terms are earned (methods.md
decision 7; docs/trainers.md).

* warm-up gate: supervised steps only until every foreground class is segmented in online validation
  (bounded by a minimum and a maximum share of the training);
* sigmoid ramp of every unsupervised weight from the iteration at which its term turns on;
* deep-supervision balance: per-pixel unsupervised terms x the full-resolution share of nnU-Net's loss;
* class-collapse guard: distribution alignment of the teacher's probabilities to the labeled class
  shares, and a per-epoch log (and warning) of each class's share of the confident pseudo-labels.

The gate, the ramp and the momentum are one object, :class:`~nnunet_semicl.schedules.UnsupervisedSchedule`
(pure, with its own ``state_dict``), built from this mixin's hyperparameters (class attributes, setting keys);
the guard is a module with state (``state_modules["alignment"]``). ``TrainingDynamicsMixin`` is a base of
``nnUNetTrainerSemiSupervised``, which owns the state it reads and writes (``global_step``, ``labeled_shares``,
``_pseudo_label_shares``, ``state_modules``) and calls it from its lifecycle hooks.
"""
from typing import Optional

import numpy as np
import torch

from nnunet_semicl.files import TRAINING_SUMMARY_FILE as SUMMARY_FILE
from nnunet_semicl.losses.pseudo_label_losses import pseudo_labels
from nnunet_semicl.modules.distribution_alignment import label_shares
from nnunet_semicl.schedules import UnsupervisedSchedule


class TrainingDynamicsMixin:
    # ---- hyperparameters (class attributes, setting keys; PapersScheduleMixin turns them off for the _paper recipes) --
    unsup_warmup = True               # False: every unsupervised term on from its phase's start (the papers)
    warmup_min_fraction = 0.1         # supervised only for at least this share of all iterations ...
    warmup_dice_threshold = 0.5       # ... and until every foreground class reaches this online-validation Dice
    warmup_dice_epochs = 2            # ... in each of this many consecutive epochs
    warmup_max_fraction = 0.5         # the gate opens here at the latest (with a warning naming the classes below) ...
    warmup_limit_floor = 0.1          # ... once every foreground class has at least this online Dice: a class the model
                                      # has not found yet would be erased by its own pseudo-labels (docs/demo.md)
    rampup_fraction = 0.2             # sigmoid ramp of every unsupervised weight (share of all iterations),
                                      # counted from the iteration at which the term turns on; 0: no ramp
    balance_deep_supervision = True   # per-pixel unsupervised terms x the full-resolution share of nnU-Net's
                                      # deep-supervision loss, so the documented sup : unsup ratio holds there
    distribution_alignment = True     # class-collapse guard (modules/distribution_alignment.py)
    alignment_momentum = 0.99
    alignment_max_ratio = 4.0
    alignment_max_cases = 20          # labeled cases read for the labeled class distribution
    alignment_statistic = "probability"  # ReMixMatch's running mean; "argmax": running argmax share (opt-in, see
                                      # docs/performance.md 3: measured worse together with copy-paste + Dice)
    alignment_boost_only = False      # True: only raise under-predicted foreground classes (opt-in, as above)
    collapse_warning_ratio = 0.1      # warn when a class's confident pseudo-label share < this x its labeled share
    unsup_momentum = None             # SGD momentum while the unsupervised terms are on (the official code's 0.9);
                                      # None: nnU-Net's 0.99 throughout (measured: docs/performance.md 3)

    # ---- the schedule object -------------------------------------------------------------------------------
    def schedule_parameters(self) -> dict:
        return {"total_iterations": self.total_iterations, "warmup": self.unsup_warmup,
                "min_fraction": self.warmup_min_fraction, "dice_threshold": self.warmup_dice_threshold,
                "dice_epochs": self.warmup_dice_epochs, "max_fraction": self.warmup_max_fraction,
                "limit_floor": self.warmup_limit_floor, "rampup_fraction": self.rampup_fraction,
                "momentum": self.unsup_momentum}

    @property
    def schedule(self) -> UnsupervisedSchedule:
        """The schedule of the unsupervised terms, built from the hyperparameters; rebuilt with its state kept when
        they change (a setting applied after construction, the step benchmark's no-ramp form)."""
        params = self.schedule_parameters()
        current = self.__dict__.get("_schedule")
        if current is None or self.__dict__.get("_schedule_parameters") != params:
            schedule = UnsupervisedSchedule(**params)
            if current is not None:
                schedule.load_state_dict(current.state_dict())
            self.__dict__["_schedule"], self.__dict__["_schedule_parameters"] = schedule, params
        return self.__dict__["_schedule"]

    @property
    def unsup_gate_step(self) -> Optional[int]:
        """Iteration at which the supervised warm-up ended (None while warming up)."""
        return self.schedule.gate_step

    @unsup_gate_step.setter
    def unsup_gate_step(self, step: Optional[int]) -> None:
        self.schedule.gate_step = None if step is None else int(step)

    def start_training_dynamics(self) -> None:
        """At the start (or resumption) of training: the labeled class shares are read once (collapse check,
        distribution-alignment target). (The gate of the papers' recipe is open from the start: the schedule.)"""
        self.labeled_shares = self.labeled_class_shares()   # read once: the collapse check compares with it
        if "alignment" in self.state_modules:
            self.state_modules["alignment"].set_target(self.labeled_shares)
        self.print_to_log_file("Class shares of the labeled data (collapse check" +
                               (", distribution-alignment target" if "alignment" in self.state_modules else "") +
                               f"): {[round(float(v), 4) for v in self.labeled_shares]}")

    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def earliest_unsup_step(self) -> int:
        """First iteration at which a method lets its unsupervised terms start (phased methods: fine-tuning)."""
        return 0

    def unsup_start_step(self) -> Optional[int]:
        """Iteration at which the unsupervised terms turned (or turn) on; None while warming up."""
        if self.unsup_gate_step is None:
            return None
        return max(self.unsup_gate_step, self.earliest_unsup_step())

    def unsup_start_text(self) -> str:
        """When the unsupervised terms start, for the log line of the gate."""
        return f"Unsupervised terms start at iteration {self.unsup_start_step()}"

    def unsup_scale(self) -> float:
        """Multiplier of every unsupervised weight now: 0 while warming up, then the sigmoid ramp."""
        return self.term_scale(self.earliest_unsup_step())

    def term_scale(self, term_start_step: int) -> float:
        """Multiplier of a term its method turns on at ``term_start_step``: 0 before that and until the warm-up
        gate opens, then the sigmoid ramp counted from the later of the two."""
        return self.schedule.scale(self.global_step, term_start_step)

    def full_resolution_share(self) -> float:
        """Share of the supervised loss that nnU-Net's deep supervision puts on the full-resolution output."""
        weights = getattr(self.loss, "weight_factors", None)
        if not self.enable_deep_supervision or not weights:
            return 1.0
        weights = [float(w) for w in weights]
        return weights[0] / sum(weights)

    def unsup_weight(self, weight: float, per_pixel: bool = False) -> float:
        """An unsupervised term's weight now: ``weight`` x ramp (x full-resolution share for per-pixel terms)."""
        scale = self.unsup_scale()
        if per_pixel and self.balance_deep_supervision:
            scale *= self.full_resolution_share()
        return weight * scale

    def apply_unsup_momentum(self) -> None:
        """SGD momentum for this iteration: ``unsup_momentum`` once the unsupervised terms are on, the optimizer's
        initial momentum before. Set every step from the schedule, so a resumed run (whose optimizer state
        carries whatever momentum was saved) follows the same rule."""
        if self.schedule.momentum is None:
            return
        momentum = self.schedule.momentum_now(self.unsup_scale() > 0, self.initial_momentum)
        for group in self.optimizer.param_groups:
            group["momentum"] = momentum

    def uses_unlabeled_now(self) -> bool:
        """Whether this iteration needs the unlabeled batch and the teacher (else: a supervised step)."""
        return self.unsup_scale() > 0

    def update_warmup_gate(self) -> None:
        """End the supervised warm-up when the rule holds (called after each epoch's online validation), and log
        why. A NaN online Dice (the class was absent from the epoch's validation patches) is no evidence for that
        epoch: the rule looks further back for that class."""
        history = [list(map(float, d)) for d in (self.logger.get_value("dice_per_class_or_region", step=None) or [])]
        d = self.schedule.update(self.global_step, history)
        n, shown = self.warmup_dice_epochs, [[round(v, 3) for v in c] for c in d.recent]
        if d.extended:
            latest = [round(c[-1], 3) if c else float("nan") for c in d.recent]
            self.print_to_log_file(
                f"WARNING: supervised warm-up continues past its limit ({self.warmup_max_fraction:g} of the training, "
                f"iteration {self.global_step}): foreground class(es) {d.not_found} not found yet (latest "
                f"online-validation Dice per class {latest} < {self.warmup_limit_floor:g}); their own pseudo-labels "
                f"would erase them. The unsupervised terms start once every class reaches {self.warmup_limit_floor:g};"
                f" if none does, this run trains as nnUNetTrainerLabeledOnly would (the final log line and "
                f"{SUMMARY_FILE} say so).")
        elif d.opened and not d.by_limit:
            self.print_to_log_file(
                f"Supervised warm-up complete at iteration {self.global_step} (epoch {self.current_epoch}): every "
                f"foreground class reached online-validation Dice >= {self.warmup_dice_threshold} in its last {n} "
                f"epochs with evidence (per class: {shown}). {self.unsup_start_text()}, ramped over "
                f"{int(self.schedule.rampup_length)} iterations.")
        elif d.opened:
            self.print_to_log_file(
                f"WARNING: supervised warm-up ended by its limit ({self.warmup_max_fraction:g} of the training, "
                f"iteration {self.global_step}) with foreground class(es) {d.below} below online-validation Dice "
                f"{self.warmup_dice_threshold} in their last {n} epochs with evidence (per class: {shown})"
                + (f" and class(es) {d.no_evidence} absent from every online validation so far" if d.no_evidence else "")
                + f". {self.unsup_start_text()}"
                + ("; the distribution alignment guards those classes." if self.distribution_alignment else "."))

    def unsupervised_terms_ran(self) -> bool:
        """Whether any unsupervised term has had a non-zero weight in this run so far."""
        start = self.unsup_start_step()
        return start is not None and self.global_step > start

    def training_summary(self) -> dict:
        """What the results folder records about the unsupervised terms (``SUMMARY_FILE``)."""
        ran = self.unsupervised_terms_ran()
        start = self.unsup_start_step()
        if ran:
            message = (f"Unsupervised terms ran from iteration {start} to {self.global_step} (warm-up gate at "
                       f"iteration {self.unsup_gate_step}).")
        else:
            why = ("the supervised warm-up gate never opened" if self.unsup_gate_step is None else
                   f"they were to start at iteration {start}, at or after the end ({self.global_step})")
            message = (f"WARNING: the unsupervised terms never turned on ({why}): this run trained as "
                       f"nnUNetTrainerLabeledOnly would, not as {type(self).__name__}. Report it as such.")
        return {"trainer": type(self).__name__, "unsupervised_terms_ran": ran, "unsup_gate_step": self.unsup_gate_step,
                "unsup_start_step": start, "iterations": self.global_step, "total_iterations": self.total_iterations,
                "message": message}

    def labeled_class_shares(self) -> torch.Tensor:
        """Class shares of the labeled cases' segmentations (at most ``alignment_max_cases`` of them)."""
        k = self.label_manager.num_segmentation_heads
        keys = sorted(self.case_sets.labeled)
        step = max(1, len(keys) // max(1, self.alignment_max_cases))
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys[::step][: self.alignment_max_cases])
        counts = np.zeros(k, dtype=np.float64)
        for key in dataset.identifiers:
            seg = np.asarray(dataset.load_case(key)[1][:]).reshape(-1)
            seg = seg[(seg >= 0) & (seg < k)].astype(np.int64)
            counts += np.bincount(seg, minlength=k)[:k]
        if counts.sum() == 0:
            return torch.full((k,), 1.0 / k)
        return torch.as_tensor(counts / counts.sum(), dtype=torch.float32)

    def teacher_pseudo_labels(self, teacher_logits: torch.Tensor, unlabeled: Optional[torch.Tensor] = None):
        """Teacher probabilities, pseudo-labels and confidence, aligned to the labeled class distribution.

        ``unlabeled`` (``[B, *spatial]`` bool, None: all) marks the pixels of unlabeled images: only they
        update the alignment's running class distribution and the logged shares. Pasted labeled
        pixels come from nnU-Net's foreground-oversampled patches; counted, they would raise the
        running foreground share and the alignment would push every foreground class down."""
        probs, labels, confidence = pseudo_labels(teacher_logits)
        alignment = self.state_modules["alignment"] if "alignment" in self.state_modules else None
        if alignment is not None:
            alignment.update(probs, unlabeled)
            probs = alignment(probs)
            confidence, labels = probs.max(dim=1)
        if self.unsup_scale() > 0:   # only while pseudo-labels train the student
            confident = confidence >= self.confidence_threshold
            if unlabeled is not None:
                confident = confident & unlabeled
            self._pseudo_label_shares.append(label_shares(labels, probs.shape[1], confident))
        return probs, labels, confidence

    def check_pseudo_label_shares(self) -> None:
        """Log each class's share of the epoch's confident pseudo-labels beside its labeled share; warn when
        a class vanishes."""
        if not self._pseudo_label_shares:
            return
        shares = torch.stack(self._pseudo_label_shares).mean(0).cpu()   # one device sync per epoch
        self._pseudo_label_shares = []
        target = self.labeled_shares
        self.print_to_log_file("confident pseudo-label share per class", [round(float(v), 4) for v in shares],
                               "| labeled share", [round(float(v), 4) for v in target])
        vanished = [c for c in range(1, len(shares)) if float(shares[c]) < self.collapse_warning_ratio * float(target[c])]
        if vanished:
            self.print_to_log_file(f"WARNING: class(es) {vanished} nearly vanished from the confident pseudo-labels "
                                   f"(share < {self.collapse_warning_ratio:g} x its labeled share).")
