"""``nnUNetTrainerMeanTeacher``: Tarvainen & Valpola's mean teacher on nnU-Net.

Consistency = mean squared error between the student's softmax on the strong view and the EMA
teacher's softmax on the weak view, moved with the strong view's geometry (so both predict the same
pixel), over valid pixels; its weight follows the shared warm-up and ``exp(-5 (1 - t)^2)`` ramp-up
(``nnUNetTrainerSemiSupervised.unsup_weight``).
"""
from typing import Dict

import torch

from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised
from nnunet_semicl.training.step_context import StepContext


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    consistency_weight = 0.1            # SSL4MIS's mean-teacher default
    term_weights = {"sup": "supervised_weight", "cons": "consistency_weight", "fp": "feature_perturbation_weight"}

    def strong_view_targets(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        return {**super().strong_view_targets(ctx), "teacher_probs": ctx.teacher_probs}

    def consistency_loss(self, ctx: StepContext) -> torch.Tensor:
        student = torch.softmax(ctx.unlabeled_logits().float(), dim=1)
        target = ctx.strong_targets["teacher_probs"].float()
        valid = ctx.valid[:, None].float()
        return ((student - target) ** 2 * valid).sum() / (valid.sum() * student.shape[1]).clamp_min(1.0)

    def compute_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "cons": self.unsup_weight(self.consistency_weight, per_pixel=True) * self.consistency_loss(ctx)}
