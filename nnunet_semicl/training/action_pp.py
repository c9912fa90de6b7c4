"""ACTION++ (MICCAI 2023): ACTION plus adaptive supervised anatomical contrast and a cosine temperature
schedule (methods.md section 4).

* **SAACL** on labeled pixels during fine-tuning: anchors per class from the student representation,
  positives = the anchor's teacher view, queue entries of its class and its class centre (weight
  lambda_a); class centres are a regular simplex fixed in closed form and matched every step to
  running class centroids by an optimal one-to-one assignment.
* **ATS**: ``tau(t) = tau_min + (tau_max - tau_min) (1 + cos(2 pi t / T)) / 2`` per iteration, one period
  over the whole training (the paper's best); it sets the temperature of the anatomical contrast
  and of SAACL during fine-tuning, and raises the relational distillation's student and teacher
  temperatures toward tau_max during pre-training ("pre-training++"). The official code's variant
  (per epoch, ten cycles) is ``nnUNetTrainerACTIONpp_officialATS``.

Deviations from the official code are listed in docs/methods/action_pp.md.
"""
from typing import Dict, Tuple

import torch

from nnunet_semicl.losses.saacl import saacl_loss, sample_class_anchors
from nnunet_semicl.modules.centres import AdaptiveCentreAllocation
from nnunet_semicl.modules.pixels import gather_pixels, resize_labels
from nnunet_semicl.modules.queues import RingBuffer
from nnunet_semicl.schedules import cosine_temperature
from nnunet_semicl.training.action import ThreeStagesMixin, nnUNetTrainerACTION
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin
from nnunet_semicl.training.step_context import StepContext


class nnUNetTrainerACTIONpp(nnUNetTrainerACTION):
    # ---- SAACL (paper: lambda_a 0.2, d 128; loss weight 0.01 as in the code) ---------------------
    saacl_weight = 0.01
    saacl_lambda = 0.2
    saacl_anchors_per_class = 256
    saacl_queue_size = 12288
    centre_momentum = 0.1             # eta of the running class centroids
    centre_seed = 0
    representation_dim = 128          # the paper's d (ACTION's 512 in 2D is the official code's)
    # ---- ATS (paper best: 0.1 -> 1.0, one cosine period over all iterations) ---------------------
    ats_tau_min = 0.1
    ats_tau_max = 1.0
    ats_period_fraction = 1.0         # period as a fraction of the training; the official code uses 0.1
    ats_per_epoch = False             # the official code recomputes tau once per epoch
    loss_terms = nnUNetTrainerACTION.loss_terms + ("saacl",)

    # ------------------------------------------------------------------------------------------
    def ats_position(self) -> Tuple[float, float]:
        """(t, period) in iterations, or in epochs with ``ats_per_epoch``."""
        if self.ats_per_epoch:
            return float(self.current_epoch), self.ats_period_fraction * self.num_epochs
        return float(self.global_step), self.ats_period_fraction * self.num_epochs * self.num_iterations_per_epoch

    def ats_temperature(self, tau_min: float = None, tau_max: float = None) -> float:
        t, period = self.ats_position()
        return cosine_temperature(t, max(period, 1e-8), self.ats_tau_min if tau_min is None else tau_min,
                                  self.ats_tau_max if tau_max is None else tau_max)

    def relational_temperatures(self) -> Tuple[float, float]:
        """Pre-training++: both temperatures follow one cosine period over the pre-training phases, starting
        (and ending) at their base value and reaching tau_max half-way.

        The cosine of the whole training starts at tau_max = 1.0, where the relational distributions over
        the queue are flat and the distillation loss is ~0: pre-training did nothing (issue 11). Anchoring
        the period at the base temperatures keeps the released code's range (base -> 1.0) with a signal."""
        _, e_fine = self.phase_starts()
        period = max(1.0, float(e_fine * self.num_iterations_per_epoch))
        t = float(self.global_step) + period / 2.0   # cosine_temperature is at tau_min half a period in
        return (cosine_temperature(t, period, self.relational_tau_student, self.ats_tau_max),
                cosine_temperature(t, period, self.relational_tau_teacher, self.ats_tau_max))

    def teacher_sees_labeled(self) -> bool:
        return self.phase() == "finetune"  # SAACL's positives are the teacher's view of labeled pixels

    def build_head_teachers(self):
        return super().build_head_teachers() + ("rep",)

    def build_state(self):
        state = super().build_state()
        d = self.default_dim(self.representation_dim)
        state["saacl_queue"] = RingBuffer(self.saacl_queue_size, (d,), with_labels=True)
        state["centres"] = AdaptiveCentreAllocation(self.label_manager.num_segmentation_heads, d,
                                                    eta=self.centre_momentum, seed=self.centre_seed)
        return state

    # ------------------------------------------------------------------------------------------
    def saacl(self, ctx: StepContext, rep: torch.Tensor, tau: float) -> torch.Tensor:
        n = ctx.n_labeled
        rep_l = rep[:n]
        size = rep_l.shape[2:]
        labels = resize_labels(ctx.labeled_target_full(), size)
        valid = resize_labels(ctx.labeled_valid(self.label_manager.ignore_label), size)
        index, anchor_labels = sample_class_anchors(labels, valid, self.saacl_anchors_per_class)
        anchors = gather_pixels(rep_l, index)
        with torch.no_grad():
            rep_t = self.head_teachers["rep"].model(ctx.teacher_features_labeled[: self.representation_taps() + 1])
            views = gather_pixels(rep_t, index).float()
        centres = self.state_modules["centres"]
        centres.update(anchors.detach().float(), anchor_labels, gather=True)
        queue = self.state_modules["saacl_queue"]
        q_feats, q_labels = queue.get()
        loss = saacl_loss(anchors, anchor_labels, views, q_feats, q_labels, centres.assigned_centres(), tau,
                          self.saacl_lambda)
        queue.push(views, anchor_labels, gather=True)
        return loss

    def finetune_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        tau = self.ats_temperature()
        rep = self.representation(ctx)
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "unsup": self.unsup_weight(self.pseudo_label_weight, per_pixel=True) * self.pseudo_label_loss(ctx),
                "anco": self.unsup_weight(self.anco_weight) * self.anatomical_contrast(ctx, rep, tau),
                "saacl": self.unsup_weight(self.saacl_weight) * self.saacl(ctx, rep, tau)}


class nnUNetTrainerACTIONpp_officialATS(nnUNetTrainerACTIONpp):
    """The released code's temperature schedule: recomputed per epoch, ten cosine cycles."""
    ats_per_epoch = True
    ats_period_fraction = 0.1


class nnUNetTrainerACTIONpp_momentum09(nnUNetTrainerACTIONpp):
    """Fine-tuning with the official code's SGD momentum 0.9 (nnU-Net's 0.99 before): the momentum comparison of
    docs/performance.md 3."""
    unsup_momentum = 0.9


class nnUNetTrainerACTIONpp_pixelMask(nnUNetTrainerACTIONpp):
    """Only confident pixels get the pseudo-label loss (``pseudo_label_pixel_mask``; docs/demo.md)."""
    pseudo_label_pixel_mask = True


class nnUNetTrainerACTIONpp_phased(ThreeStagesMixin, nnUNetTrainerACTIONpp):
    """The paper's three stages in one run, with pre-training++ (scheduled relational temperatures)."""


class nnUNetTrainerACTIONpp_noPretrain(nnUNetTrainerACTIONpp):
    """Fine-tuning only, e.g. after nnUNetTrainerACTIONPretrain with -pretrained_weights. The same as the default
    since that fine-tunes only; the name is kept for that recipe and for model folders trained under it (runs 10
    and 11 of docs/performance.md 3)."""


class nnUNetTrainerACTIONpp_noRampUp(PapersScheduleMixin, ThreeStagesMixin, nnUNetTrainerACTIONpp):
    """The official recipe: the three stages, each term at full weight from the first iteration of its stage."""
    supervised_weight = 0.5
