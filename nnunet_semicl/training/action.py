"""ACTION (IPMI 2023): relational contrastive distillation, then anatomical contrast (methods.md section 3).

The paper's three stages run as phases of ONE nnU-Net training (decision 4 of methods.md):

* ``global`` (stage i, first 25% of epochs): ISD-style relational KL between the student's and the
  EMA teacher's pooled bottleneck embeddings, against a FIFO queue of teacher embeddings;
* ``local`` (stage ii, next 25%): the same on windows of the output logits, plus the global term;
* ``finetune`` (stage iii, last 50%): ``(CE + Dice) + L_unsup + 0.01 L_anco`` (paper: 0.5 (CE + Dice)) with ReCo-style
  anatomical contrast on labeled (ground truth) and confident unlabeled (pseudo-label) pixels.

Those phases are ``ThreeStagesMixin`` (``nnUNetTrainerACTION_paper``, the literal recipe). The default runs the
same terms without phases: from the warm-up gate on, the relational distillation (global + local) and the
fine-tuning terms together, gated and ramped like every unsupervised term. In a run from scratch the pre-training
phases overlap the supervised warm-up and only take iterations from fine-tuning (docs/performance.md 3: ACTION++
0.762 fine-tuning only against 0.731 with the phases, two runs each); running the distillation alongside keeps
the component ACTION is named for without that cost (docs/methods/action.md, naming rule).

The phases, relational heads and queues are ``nnUNetTrainerRelationalPretraining``'s
(``training/relational_pretraining.py``, shared with MONA); this module adds the anatomical contrast.
Deliberate differences from the official code are listed in docs/methods/action.md.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from nnunet_semicl.losses.anatomical import anatomical_contrast_loss
from nnunet_semicl.modules.pixels import resize_labels
from nnunet_semicl.training.relational_pretraining import nnUNetTrainerRelationalPretraining
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin
from nnunet_semicl.training.step_context import StepContext


class ThreeStagesMixin:
    """The paper's stages i / ii / iii (100 / 100 / 200 epochs) as fractions of nnU-Net's num_epochs, the relational
    terms at the paper's weight 1.0 (in stages i and ii they run with the labeled loss alone). Put it before the
    trainer among the bases."""
    global_phase_fraction = 0.25
    local_phase_fraction = 0.25
    global_weight = 1.0
    local_weight = 1.0


class nnUNetTrainerACTION(nnUNetTrainerRelationalPretraining):
    # ---- phases: no pre-training phase; the relational distillation (global + local) runs alongside the
    # fine-tuning terms from the warm-up gate on, gated and ramped like them (ThreeStagesMixin: the paper's stages)
    global_phase_fraction = 0.0
    local_phase_fraction = 0.0
    relational_in_finetune = True
    # beside the fine-tuning terms, weights that bring each relational term's gradient to about the pseudo-label
    # term's where the temperatures are sharpest: at the pre-training weight 1.0 the global term's gradient was 28x
    # (local 3x) the pseudo-label term's and cost 2.0 points (`benchmark gradients`; docs/methods/action.md)
    global_weight = 0.02
    local_weight = 0.25
    # ---- anatomical contrast (stage iii; paper values) -------------------------------------------
    supervised_weight = 1.0           # CE + Dice during fine-tuning; the paper's 0.5 (the _noRampUp variants) assumes a
                                      # converged pre-trained model: in a short run from scratch the labels still teach
                                      # (docs/performance.md 3)
    anco_weight = 0.01
    anco_tau = 0.5
    anco_strong_threshold = 0.97      # hard queries: student probability below this
    anco_weak_threshold = 0.7         # unlabeled pixels take part when the teacher is this confident
    anco_queries = 256
    anco_negatives = 512
    term_weights = {**nnUNetTrainerRelationalPretraining.term_weights, "anco": "anco_weight"}

    def contrast_targets(self, ctx: StepContext, size) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels and participating pixels of ``cat(labeled, strong unlabeled)`` at ``size``.

        Labeled pixels use the ground truth (minus an ignore label), unlabeled ones the moved
        pseudo-label where the teacher was confident and the strong view has content.
        """
        y = ctx.labeled_target_full()
        valid_l = ctx.labeled_valid(self.label_manager.ignore_label)
        t = ctx.strong_targets
        valid_u = ctx.valid & (t["confidence"] >= self.anco_weak_threshold)
        labels = resize_labels(torch.cat([y, t["pseudo_label"].to(y.dtype)]), size)
        valid = resize_labels(torch.cat([valid_l, valid_u]), size)
        return labels, valid

    def anatomical_contrast(self, ctx: StepContext, rep: torch.Tensor, tau: float = None) -> torch.Tensor:
        size = rep.shape[2:]
        labels, valid = self.contrast_targets(ctx, size)
        prob = F.interpolate(ctx.student_probs(), size=tuple(size), mode="area")
        return anatomical_contrast_loss(rep, labels, valid, prob, self.anco_strong_threshold,
                                        self.anco_tau if tau is None else tau, self.anco_queries, self.anco_negatives)

    def finetune_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "unsup": self.unsup_weight(self.pseudo_label_weight, per_pixel=True) * self.pseudo_label_loss(ctx),
                "anco": self.unsup_weight(self.anco_weight) * self.anatomical_contrast(ctx, self.representation(ctx))}


class nnUNetTrainerACTION_paper(PapersScheduleMixin, ThreeStagesMixin, nnUNetTrainerACTION):
    """The official recipe: the three stages (global, local, fine-tuning), each term at full weight from the first
    iteration of its stage, the labeled loss halved in fine-tuning."""
    relational_in_finetune = False
    supervised_weight = 0.5
