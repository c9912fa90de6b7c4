"""Mechanisms of other semi-supervised methods, offered to every semi-supervised trainer as opt-in setting keys
(docs/trainers.md, "Peers' mechanisms as setting keys"); all off by default, so no default changes.

* feature perturbation (UniMatch, Yang et al., CVPR 2023): the weak unlabeled view through the student's encoder,
  every skip channel-dropped, through its decoder, trained with the trainer's pseudo-label loss (term ``fp``).

``PeerMechanismsMixin`` is a base of ``nnUNetTrainerSemiSupervised``, which lists the terms in ``term_weights``,
decides in ``term_runs`` whether they exist and adds :meth:`peer_terms` to the method's terms (``step_losses``).
"""
from typing import Dict

import torch

from nnunet_semicl.modules.ema import unwrap
from nnunet_semicl.modules.feature_perturbation import channel_dropout
from nnunet_semicl.training.step_context import StepContext, full_resolution


class PeerMechanismsMixin:
    # ---- hyperparameters (class attributes, setting keys) -----------------------------------------------------
    feature_perturbation_weight = 0.0   # opt-in, not measured on ACDC yet: UniMatch's FP branch as term "fp" (one
                                        # more student forward + backward over the unlabeled batch); UniMatch: 0.5
    feature_perturbation_dropout = 0.5  # channel-dropout probability of every skip (UniMatch's nn.Dropout2d(0.5))

    def peer_terms(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """The weighted terms of the mechanisms switched on, while the schedule gives them a weight (gate, ramp,
        deep-supervision balance, as ``unsup``; phased methods: in fine-tuning, with the pseudo-label term)."""
        terms = {}
        if self.term_runs("fp"):
            weight = self.unsup_weight(self.feature_perturbation_weight, per_pixel=True)
            if weight > 0:
                terms["fp"] = weight * self.feature_perturbation_loss(ctx)
        return terms

    def feature_perturbation_loss(self, ctx: StepContext) -> torch.Tensor:
        """UniMatch's feature-perturbation branch: the student's encoder on the weak unlabeled view, every skip
        channel-dropped, its decoder, and this trainer's pseudo-label loss against the teacher's pseudo-labels of
        that same view (weak-view coordinates: no strong-view geometry, every pixel has content)."""
        # encoder and decoder of the one unwrapped module; under DDP its parameters then get this branch's gradient
        # summed with the wrapped forward's in the same backward, as a parameter used twice in one forward does
        network = unwrap(self.network)
        skips = channel_dropout(network.encoder(ctx.x_weak), self.feature_perturbation_dropout)
        logits = full_resolution(network.decoder(skips))
        if self.student_taps is not None:   # the hooks recorded this forward too; the step's features were read
            self.student_taps.clear()
        valid = torch.ones_like(ctx.pseudo_label, dtype=torch.bool)
        return self.pseudo_label_objective(logits, ctx.pseudo_label, ctx.confidence, valid)
