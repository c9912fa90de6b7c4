"""MONA (TPAMI 2024) and ARCO (NeurIPS 2023): methods.md sections 5 and 6.

One nnU-Net training with two phases:

* ``local`` (first third of the epochs): the relational semi-supervised pre-training, i.e. ACTION's
  stages i and ii merged: ``L_sup + L_global + L_local`` (MONA's stage 1);
* ``finetune``: ``L_sup + 0.01 L_contrast + L_unsup + L_eqv + L_nn`` with
  - **tailness** (``contrast``): U2PL-style pixel contrast against per-class memory banks of teacher
    features, reliable/unreliable pixels split by entropy with a percentile decaying 20 -> 0,
    anchors drawn by the method's sampler (uniform: MONA; stratified: ARCO);
  - **consistency** (``eqv``), as released: a dedicated random affine transform T (rotation +-60 degrees,
    scale 0.83-1.25, mirror) of the student's input batch (labeled and strong unlabeled images);
    KL between the student's prediction on T(x) and T applied to its own stop-gradient prediction on
    x, on confident foreground (``equivariance_target = "teacher"``: the earlier variant, the teacher's
    probabilities moved through the strong view, no extra forward);
  - **diversity** (``nn``): the student's image embedding pulled toward the k nearest neighbours of
    the teacher's embedding in a FIFO pool of compact teacher embeddings (it trains, unlike the
    released loss, which has no gradient).

The teacher's representation of the unlabeled images is computed on the weak view (the forward
that also gives the pseudo-labels) and moved into the strong view's geometry by replaying the
augmentation's draws at the representation's resolution: no second teacher forward. The phases,
relational heads and queues are ``nnUNetTrainerRelationalPretraining``'s
(``training/relational_pretraining.py``, shared with ACTION). Deviations from the official code are
listed in docs/methods/mona_arco.md.
"""
from typing import Dict

import math

import torch
import torch.nn.functional as F

from nnunet_semicl.augment import random_smooth_grid, warp, warp_valid_mask
from nnunet_semicl.losses.equivariance import confident_foreground_mask, equivariance_loss
from nnunet_semicl.losses.memory_bank_contrast import memory_bank_contrast_loss, pixel_entropy
from nnunet_semicl.losses.nearest_neighbour import (NearestNeighbourPool, embedding_dim, image_embedding,
                                                    nearest_neighbour_loss)
from nnunet_semicl.modules.memory_bank import ClassMemoryBank
from nnunet_semicl.modules.pixels import pixel_major, resize_labels
from nnunet_semicl.sampling.base import PixelSampler
from nnunet_semicl.sampling.stratified import StratifiedSampler
from nnunet_semicl.sampling.uniform import UniformSampler
from nnunet_semicl.schedules import linear_decay
from nnunet_semicl.training.relational_pretraining import nnUNetTrainerRelationalPretraining
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin
from nnunet_semicl.training.step_context import StepContext, full_resolution


class nnUNetTrainerMONA(nnUNetTrainerRelationalPretraining):
    # ---- phases: relational pre-training (ACTION i+ii merged), then fine-tuning (~100 + 200 epochs) --
    global_phase_fraction = 0.0
    local_phase_fraction = 1.0 / 3.0
    supervised_weight = 1.0            # CE + Dice (methods.md 2.6)
    representation_activation = False  # as released: two 1x1 convolutions, no nonlinearity (train_arco_2d.py)
    rep_head_teacher = True            # teacher features for the memory banks, positives and NN
    # ---- tailness: U2PL-style memory-bank contrast (paper / code values) -------------------------
    contrast_weight = 0.01
    contrast_tau = 0.5
    contrast_anchors = 256
    contrast_negatives = 512
    anchor_threshold = 0.3
    negative_threshold = 0.97
    entropy_alpha_start = 20.0         # alpha_t = 20 (1 - t/T) over the fine-tuning phase
    bank_size = 30000
    bank_background_size = 50000
    bank_dtype = None                  # None: float16 on CUDA (halves the banks' memory), float32 on CPU
                                       # (CPU half-precision conversion would dominate the step)
    negative_rule = "intended"         # "as_released": the released code's (nearly empty) negative rule
    # ---- consistency: equivariance -----------------------------------------------------------
    equivariance_weight = 1.0
    equivariance_threshold = 0.7
    equivariance_target = "student"    # released: the student's own stop-gradient prediction under T; "teacher":
                                       # the teacher's probabilities moved through the strong view
    equivariance_rotation = 60.0       # degrees (released transform)
    equivariance_scale = (0.83, 1.25)
    equivariance_mirror = 0.5
    # ---- diversity: nearest neighbours -------------------------------------------------------
    nn_weight = 1.0
    nn_k = 5
    nn_pool_size = 36
    nn_grid = 4                        # image embedding: the representation pooled to 4 cells per axis
    nn_query = "teacher"
    term_weights = {**nnUNetTrainerRelationalPretraining.term_weights, "contrast": "contrast_weight",
                    "eqv": "equivariance_weight", "nn": "nn_weight"}

    # ------------------------------------------------------------------------------------------
    def build_sampler(self) -> PixelSampler:
        return UniformSampler()

    def teacher_sees_labeled(self) -> bool:
        # labeled pixels contribute teacher features and probabilities to positives and negatives
        return self.phase() == "finetune"

    def build_state(self):
        state = super().build_state()
        self.sampler = self.build_sampler()
        if not self.has_finetune():
            return state
        k = self.label_manager.num_segmentation_heads
        d = self.default_dim(self.representation_dim)
        state["bank"] = ClassMemoryBank(k, d, [self.bank_background_size] + [self.bank_size] * (k - 1),
                                        dtype=self.bank_dtype or (torch.float16 if self.device.type == "cuda"
                                                                  else torch.float32))
        state["nn_pool"] = NearestNeighbourPool(self.nn_pool_size, embedding_dim(d, self.spatial_dims, self.nn_grid))
        return state

    def strong_view_targets(self, ctx: StepContext):
        return {**super().strong_view_targets(ctx), "teacher_probs": ctx.teacher_probs}

    def finetune_progress(self) -> float:
        _, e_fine = self.phase_starts()
        total = max(1, (self.num_epochs - e_fine) * self.num_iterations_per_epoch)
        return (self.global_step - e_fine * self.num_iterations_per_epoch) / total

    # ------------------------------------------------------------------------------------------
    def teacher_representation(self, ctx: StepContext):
        """Teacher representation of ``cat(labeled, unlabeled weak)``, its probabilities at that resolution."""
        t = self.representation_taps() + 1
        feats = [torch.cat([a, b]) for a, b in zip(ctx.teacher_features_labeled[:t], ctx.teacher_features[:t])]
        with torch.no_grad():
            rep = self.head_teachers["rep"].model(feats)
            logits = torch.cat([ctx.teacher_logits_labeled, ctx.teacher_logits])
            probs = F.interpolate(torch.softmax(logits.float(), 1), size=tuple(rep.shape[2:]), mode="area")
        return rep, probs

    def tailness(self, ctx: StepContext, rep: torch.Tensor, t_rep: torch.Tensor, t_probs: torch.Tensor):
        n = ctx.n_labeled
        size = tuple(rep.shape[2:])
        # the unlabeled half of the teacher maps was computed on the weak view: move it into the strong view
        t_rep_u, moved_ok = self.augmentation_for_step().replay(ctx.strong_params, t_rep[n:].float())
        t_probs_u, _ = self.augmentation_for_step().replay(ctx.strong_params, t_probs[n:])
        # in the rep head's layout (the warp returns channels-first): the loss flattens it to [pixels, D] without a copy
        t_rep = torch.cat([t_rep[:n].float(), pixel_major(t_rep_u)])
        t_probs = torch.cat([t_probs[:n], t_probs_u])
        y = ctx.labeled_target_full()
        valid_l = ctx.labeled_valid(self.label_manager.ignore_label)
        labels = resize_labels(torch.cat([y, ctx.strong_targets["pseudo_label"].to(y.dtype)]), size)
        valid = resize_labels(torch.cat([valid_l, ctx.valid]), size)
        valid[n:] &= moved_ok
        # the released code splits reliable/unreliable by the entropy of the student on the strong view
        probs = ctx.student_probs()
        entropy = pixel_entropy(F.interpolate(probs, size=size, mode="area"))
        is_labeled = torch.arange(rep.shape[0], device=rep.device) < n
        alpha = linear_decay(self.finetune_progress(), 1.0, self.entropy_alpha_start, 0.0)
        return memory_bank_contrast_loss(rep, t_rep, labels, is_labeled, t_probs, entropy, alpha,
                                         self.state_modules["bank"], sampler=self.sampler, valid=valid,
                                         num_anchors=self.contrast_anchors, num_negatives=self.contrast_negatives,
                                         temperature=self.contrast_tau, anchor_threshold=self.anchor_threshold,
                                         negative_threshold=self.negative_threshold,
                                         negative_rule=self.negative_rule, gather=True)

    def equivariance_mask(self, ctx: StepContext) -> torch.Tensor:
        """Pixels of ``cat(labeled, strong unlabeled)`` the equivariance acts on, as released: ground-truth
        foreground on labeled images; on unlabeled ones the teacher's pseudo-label foreground where the teacher's
        confidence is at least ``equivariance_threshold`` (both in the strong view's geometry)."""
        y = ctx.labeled_target_full()
        labeled = (y != 0) & ctx.labeled_valid(self.label_manager.ignore_label)
        t = ctx.strong_targets
        unlabeled = (t["pseudo_label"] != 0) & (t["confidence"] >= self.equivariance_threshold) & ctx.valid
        return torch.cat([labeled, unlabeled])

    def consistency(self, ctx: StepContext) -> torch.Tensor:
        if self.equivariance_target == "teacher":
            target = ctx.strong_targets["teacher_probs"]
            mask = confident_foreground_mask(target, self.equivariance_threshold) & ctx.valid
            return equivariance_loss(ctx.unlabeled_logits(), target, mask)
        # as released: T(stopgrad f(x)) against f(T(x)) over the whole student batch
        x = torch.cat([ctx.x_labeled, ctx.x_strong.to(ctx.x_labeled.dtype)])
        with torch.no_grad():
            probs = ctx.student_probs()
            grid = random_smooth_grid(x.shape[0], x.shape[2:], magnitude=0.0, scale=self.equivariance_scale,
                                      p_mirror=self.equivariance_mirror,
                                      max_rotation=math.radians(self.equivariance_rotation), device=x.device)
            target = warp(probs, grid)
            mask = warp(self.equivariance_mask(ctx)[:, None].to(torch.uint8), grid)[:, 0].bool() & \
                warp_valid_mask(grid)
        return equivariance_loss(full_resolution(self.network(warp(x, grid))), target, mask)

    def diversity(self, ctx: StepContext, rep: torch.Tensor, t_rep: torch.Tensor) -> torch.Tensor:
        n = ctx.n_labeled
        student = image_embedding(rep[n:], self.nn_grid)
        teacher = image_embedding(t_rep[n:].float(), self.nn_grid)   # weak view
        pool = self.state_modules["nn_pool"]
        loss = nearest_neighbour_loss(student, teacher, pool, self.nn_k, self.nn_query)
        pool.push(teacher, gather=True)  # after the loss: an image is never its own neighbour
        return loss

    def finetune_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        rep = self.representation(ctx)
        t_rep, t_probs = self.teacher_representation(ctx)
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "unsup": self.unsup_weight(self.pseudo_label_weight, per_pixel=True) * self.pseudo_label_loss(ctx),
                "contrast": self.unsup_weight(self.contrast_weight) * self.tailness(ctx, rep, t_rep, t_probs),
                "eqv": self.unsup_weight(self.equivariance_weight, per_pixel=True) * self.consistency(ctx),
                "nn": self.unsup_weight(self.nn_weight) * self.diversity(ctx, rep, t_rep)}


class nnUNetTrainerARCO(nnUNetTrainerMONA):
    """ARCO-SG (the paper's best): stratified sampling over spatial strata (image x grid cell)."""
    sampler_antithetic = False
    sampler_strata = "spatial"         # "index": the released code's strata over the candidate list
    sampler_grid = None                # None: 4 cells per axis in 2D (16 strata per image), 2 in 3D, coarsened to the draws

    def build_sampler(self) -> PixelSampler:
        return StratifiedSampler(self.sampler_grid, antithetic=self.sampler_antithetic, strata=self.sampler_strata)


class nnUNetTrainerARCO_SAG(nnUNetTrainerARCO):
    """ARCO-SAG: stratified-antithetic sampling (reflections through each cell's centre)."""
    sampler_antithetic = True


class nnUNetTrainerMONA_paper(PapersScheduleMixin, nnUNetTrainerMONA):
    """The official recipe: fine-tuning terms at full weight from the first fine-tuning iteration."""


class nnUNetTrainerARCO_paper(PapersScheduleMixin, nnUNetTrainerARCO):
    """The official recipe: fine-tuning terms at full weight from the first fine-tuning iteration."""
