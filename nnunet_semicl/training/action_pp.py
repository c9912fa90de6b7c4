"""ACTION++ (MICCAI 2023): ACTION plus adaptive supervised anatomical contrast and a cosine temperature
schedule (methods.md section 4).

* **SAACL** on labeled pixels during fine-tuning: anchors per class from the student representation,
  positives = the anchor's teacher view, queue entries of its class and its class centre (weight
  lambda_a); class centres are a regular simplex fixed in closed form and matched every step to
  running class centroids by an optimal one-to-one assignment.
* **ATS**: ``tau(t) = tau_min + (tau_max - tau_min) (1 + cos(2 pi t / T)) / 2`` per iteration (the paper's
  best); it sets the temperature of the anatomical contrast and of SAACL, and scales the relational
  distillation's student and teacher
  temperatures (both by one factor, so the teacher stays sharper) during pre-training ("pre-training++") and
  whenever the distillation runs. It counts from the iteration at which the fine-tuning terms start, one period
  over their run, as the official code cycles over its fine-tuning run. The official code's form (per epoch,
  ten cycles) is the setting ``ats_per_epoch=true ats_period_fraction=0.1``.

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
    rep_head_teacher = True           # SAACL's positives: the teacher's view of labeled pixels
    # ---- ATS (paper best: 0.1 -> 1.0, one cosine period over the fine-tuning terms' run) -----------
    ats_tau_min = 0.1
    ats_tau_max = 1.0
    ats_period_fraction = 1.0         # period as a fraction of the fine-tuning terms' run; the official code: 0.1
    ats_per_epoch = False             # the official code recomputes tau once per epoch
    term_weights = {**nnUNetTrainerACTION.term_weights, "saacl": "saacl_weight"}

    # ------------------------------------------------------------------------------------------
    def ats_window(self) -> Tuple[int, int]:
        """(first iteration, length) of the run the ATS cycles over: the fine-tuning terms' run, from the iteration
        at which they start (warm-up gate or fine-tuning, whichever is later) to the end of training, as the
        official code cycles over its fine-tuning run."""
        start = self.unsup_start_step()
        start = self.earliest_unsup_step() if start is None else start
        return start, max(1, self.total_iterations - start)

    def ats_position(self) -> Tuple[float, float]:
        """(t, period) in iterations (in epochs with ``ats_per_epoch``), counted from the window's start."""
        start, length = self.ats_window()
        t = max(0, self.global_step - start)
        if self.ats_per_epoch:
            ipe = self.num_iterations_per_epoch
            return float(t // ipe), self.ats_period_fraction * length / ipe
        return float(t), self.ats_period_fraction * length

    def ats_temperature(self) -> float:
        """The temperature of the anatomical contrast and SAACL now (it replaces ACTION's fixed ``anco_tau``)."""
        t, period = self.ats_position()
        return cosine_temperature(t, max(period, 1e-8), self.ats_tau_min, self.ats_tau_max)

    def relational_temperatures(self) -> Tuple[float, float]:
        """The relational terms' (student, teacher) temperatures, both scaled by one ATS factor (1 ..
        tau_max / tau_min), so the teacher stays as much sharper than the student as ACTION's 0.1 / 0.01: the
        targets never become as flat as the student (a teacher at the student's temperature gives no signal).

        * fine-tuning (the default's distillation runs there): the factor follows the ATS;
        * pre-training++ (the ``_paper`` recipe's phases): one cosine period over the pre-training, starting and
          ending at the base values (the cosine's start at tau_max would leave pre-training without a signal:
          issue 11), tau_max / tau_min times the base half-way."""
        if self.phase() == "finetune":
            factor = self.ats_temperature() / self.ats_tau_min
        else:
            period = max(1.0, float(self.earliest_unsup_step()))
            t = float(self.global_step) + period / 2.0   # cosine_temperature is at tau_min half a period in
            factor = cosine_temperature(t, period, 1.0, self.ats_tau_max / self.ats_tau_min)
        return self.relational_tau_student * factor, self.relational_tau_teacher * factor

    def teacher_sees_labeled(self) -> bool:
        return self.phase() == "finetune"  # SAACL's positives are the teacher's view of labeled pixels

    def build_state(self):
        state = super().build_state()
        if not self.has_finetune():
            return state
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


class nnUNetTrainerACTIONpp_paper(PapersScheduleMixin, ThreeStagesMixin, nnUNetTrainerACTIONpp):
    """The official recipe: the three stages with pre-training++ (scheduled relational temperatures), each term at
    full weight from the first iteration of its stage, the labeled loss halved in fine-tuning."""
    relational_in_finetune = False
    supervised_weight = 0.5
