"""ACTION (IPMI 2023): relational contrastive distillation, then anatomical contrast (methods.md section 3).

The paper's three stages run as phases of ONE nnU-Net training (decision 4 of methods.md):

* ``global`` (stage i, first 25% of epochs): ISD-style relational KL between the student's and the
  EMA teacher's pooled bottleneck embeddings, against a FIFO queue of teacher embeddings;
* ``local`` (stage ii, next 25%): the same on windows of the output logits, plus the global term;
* ``finetune`` (stage iii, last 50%): ``0.5 (CE + Dice) + L_unsup + 0.01 L_anco`` with ReCo-style
  anatomical contrast on labeled (ground truth) and confident unlabeled (pseudo-label) pixels.

The phase is a function of the epoch, so ``--c`` resumes in the right phase; at the start of
fine-tuning the teacher restarts from the student (as in the official code). Deliberate
differences from the official code are listed in docs/methods/action.md.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from nnunet_semicl.augment import StrongAugmentation
from nnunet_semicl.losses.anatomical import anatomical_contrast_loss
from nnunet_semicl.losses.relational import relational_kl_loss
from nnunet_semicl.modules.heads import RepresentationHead, select_representation_taps
from nnunet_semicl.modules.pixels import resize_labels
from nnunet_semicl.modules.queues import RingBuffer
from nnunet_semicl.modules.relational_heads import GlobalRelationalHead, LocalRelationalHead
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin, StepContext, nnUNetTrainerSemiSupervised

PHASES = ("global", "local", "finetune")


class nnUNetTrainerACTION(nnUNetTrainerSemiSupervised):
    # ---- phases: the paper's 100 / 100 / 200 epochs, as fractions of nnU-Net's num_epochs ----------
    global_phase_fraction = 0.25
    local_phase_fraction = 0.25
    # ---- relational distillation (stages i and ii; paper values) ---------------------------------
    relational_queue_size = 36
    relational_tau_student = 0.1
    relational_tau_teacher = 0.01
    global_dim = None                 # None: 512 in 2D, 128 in 3D (official code)
    global_pool_cells = 2             # bottleneck pooled to 2 cells per axis (ISD: 1, flat under instance norm)
    global_weight = 1.0
    local_weight = 1.0
    local_window_fraction = 0.25
    local_pooled = None               # None: 8 cells per axis in 2D (64-px windows -> 8x8), 4 in 3D
    pretrain_supervised_weight = 1.0  # CE + Dice during pre-training (methods.md 2.6)
    # ---- anatomical contrast (stage iii; paper values) -------------------------------------------
    supervised_weight = 0.5           # 0.5 (CE + Dice) during fine-tuning
    anco_weight = 0.01
    anco_tau = 0.5
    anco_strong_threshold = 0.97      # hard queries: student probability below this
    anco_weak_threshold = 0.7         # unlabeled pixels take part when the teacher is this confident
    anco_queries = 256
    anco_negatives = 512
    representation_dim = None         # None: 512 in 2D, 128 in 3D
    representation_stride = 4         # representation at >= 1/4 resolution in-plane (ReCo's feature stride)
    representation_max_voxels = 16384  # ... and at most this many voxels per sample (3D memory bound)
    representation_activation = False  # ACTION's head: two linear layers
    uses_features = True
    loss_terms = ("sup", "unsup", "global", "local", "anco")

    # ------------------------------------------------------------------------------------------
    # phases
    # ------------------------------------------------------------------------------------------
    def phase_starts(self) -> Tuple[int, int]:
        """First epoch of the local phase and of fine-tuning."""
        e_local = int(round(self.num_epochs * self.global_phase_fraction))
        e_fine = e_local + int(round(self.num_epochs * self.local_phase_fraction))
        return e_local, min(e_fine, self.num_epochs)

    def phase(self, epoch: int = None) -> str:
        epoch = self.current_epoch if epoch is None else epoch
        e_local, e_fine = self.phase_starts()
        return "global" if epoch < e_local else ("local" if epoch < e_fine else "finetune")

    def earliest_unsup_step(self) -> int:
        return self.phase_starts()[1] * self.num_iterations_per_epoch

    def uses_unlabeled_now(self) -> bool:
        # pre-training always uses the unlabeled batch; fine-tuning once its terms are on
        return self.phase() != "finetune" or super().uses_unlabeled_now()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        _, e_fine = self.phase_starts()
        if self.current_epoch == e_fine and e_fine > 0:
            # stage iii starts from the pre-trained student; its teacher restarts from it (official code)
            self.sync_teachers()
            self.print_to_log_file("ACTION: fine-tuning starts; teacher re-initialised from the student")
        self.print_to_log_file(f"ACTION phase: {self.phase()}")

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        return len(self.configuration_manager.patch_size)

    def build_strong_augmentation(self) -> StrongAugmentation:
        self.pretrain_augmentation = StrongAugmentation(p_cutmix=0.0, p_warp=0.0)  # ISD: photometric views
        return StrongAugmentation()

    def augmentation_for_step(self) -> StrongAugmentation:
        return self.strong_augmentation if self.phase() == "finetune" else self.pretrain_augmentation

    def representation_taps(self) -> int:
        """Index of the last tap used by the representation head (its resolution)."""
        return select_representation_taps(self.tap_spatial_shapes(), self.representation_max_voxels,
                                          self.configuration_manager.patch_size, self.representation_stride)

    def default_dim(self, value):
        """Class attribute or the official code's width: 512 in 2D, 128 in 3D."""
        return value or (512 if self.spatial_dims == 2 else 128)

    def build_heads(self):
        dim2 = self.spatial_dims == 2
        channels = self.tap_channels()
        n_classes = self.label_manager.num_segmentation_heads
        rep_dim = self.default_dim(self.representation_dim)
        t = self.representation_taps()
        return {
            "global": GlobalRelationalHead(channels[0], self.default_dim(self.global_dim),
                                           pool_cells=self.global_pool_cells, spatial_dims=self.spatial_dims),
            "local": LocalRelationalHead(n_classes, self.local_window_fraction, self.local_pooled or (8 if dim2 else 4)),
            "rep": RepresentationHead(channels[: t + 1], rep_dim, rep_dim, self.spatial_dims,
                                      activation=self.representation_activation),
        }

    def build_head_teachers(self):
        return ("global", "local")

    def build_state(self):
        global_dim = self.default_dim(self.global_dim)
        n_win, emb = self.heads["local"].window_layout(self.configuration_manager.patch_size)
        return {**super().build_state(),
                "global_queue": RingBuffer(self.relational_queue_size, (global_dim,)),
                "local_queue": RingBuffer(self.relational_queue_size, (n_win, emb))}

    # ------------------------------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------------------------------
    def relational_temperatures(self) -> Tuple[float, float]:
        return self.relational_tau_student, self.relational_tau_teacher

    def global_distillation(self, ctx: StepContext) -> torch.Tensor:
        n = ctx.n_labeled
        student = self.heads["global"](ctx.features[0][n:])
        with torch.no_grad():
            teacher = self.head_teachers["global"].model.project(ctx.teacher_features[0])
        queue = self.state_modules["global_queue"]
        tau_s, tau_t = self.relational_temperatures()
        loss = relational_kl_loss(student, teacher, queue.get()[0], tau_s, tau_t)
        queue.push(teacher.float(), gather=True)
        return loss

    def local_distillation(self, ctx: StepContext) -> torch.Tensor:
        head = self.heads["local"]
        student = head.predict(head.project(ctx.unlabeled_logits()))
        with torch.no_grad():
            teacher = self.head_teachers["local"].model.project(ctx.teacher_logits)
        queue = self.state_modules["local_queue"]
        tau_s, tau_t = self.relational_temperatures()
        loss = relational_kl_loss(student, teacher, queue.get()[0].permute(1, 0, 2), tau_s, tau_t)
        queue.push(teacher.float(), gather=True)
        return loss

    def representation(self, ctx: StepContext) -> torch.Tensor:
        return self.heads["rep"](ctx.features[: self.representation_taps() + 1])

    def contrast_targets(self, ctx: StepContext, size) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels and participating pixels of ``cat(labeled, strong unlabeled)`` at ``size``.

        Labeled pixels use the ground truth (minus an ignore label), unlabeled ones the moved
        pseudo-label where the teacher was confident and the strong view has content.
        """
        y = ctx.labeled_target_full()
        valid_l = torch.ones_like(y, dtype=torch.bool)
        if self.label_manager.has_ignore_label:
            valid_l = y != self.label_manager.ignore_label
        t = ctx.strong_targets
        valid_u = ctx.valid & (t["confidence"] >= self.anco_weak_threshold)
        labels = resize_labels(torch.cat([y, t["pseudo_label"].to(y.dtype)]), size)
        valid = resize_labels(torch.cat([valid_l, valid_u]), size)
        return labels, valid

    def anatomical_contrast(self, ctx: StepContext, rep: torch.Tensor, tau: float = None) -> torch.Tensor:
        size = rep.shape[2:]
        labels, valid = self.contrast_targets(ctx, size)
        full = ctx.outputs[0] if isinstance(ctx.outputs, (list, tuple)) else ctx.outputs
        prob = F.interpolate(torch.softmax(full.detach().float(), 1), size=tuple(size), mode="area")
        return anatomical_contrast_loss(rep, labels, valid, prob, self.anco_strong_threshold,
                                        self.anco_tau if tau is None else tau, self.anco_queries, self.anco_negatives)

    def compute_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        phase = self.phase()
        if phase == "global":
            return {"sup": self.pretrain_supervised_weight * self.supervised_loss(ctx),
                    "global": self.global_weight * self.global_distillation(ctx)}
        if phase == "local":
            return {"sup": self.pretrain_supervised_weight * self.supervised_loss(ctx),
                    "global": self.global_weight * self.global_distillation(ctx),
                    "local": self.local_weight * self.local_distillation(ctx)}
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "unsup": self.unsup_weight(self.pseudo_label_weight, per_pixel=True) * self.pseudo_label_loss(ctx),
                "anco": self.unsup_weight(self.anco_weight) * self.anatomical_contrast(ctx, self.representation(ctx))}


class nnUNetTrainerACTION_noPretrain(nnUNetTrainerACTION):
    """Stage iii only (fine-tuning with anatomical contrast); e.g. after ``nnUNetTrainerACTIONPretrain``
    with ``-pretrained_weights .../checkpoint_final.pth``."""
    global_phase_fraction = 0.0
    local_phase_fraction = 0.0


class nnUNetTrainerACTIONPretrain(nnUNetTrainerACTION):
    """Stages i and ii only (half the epochs each); its checkpoint feeds ``-pretrained_weights``."""
    global_phase_fraction = 0.5
    local_phase_fraction = 0.5


class nnUNetTrainerACTION_noRampUp(PapersScheduleMixin, nnUNetTrainerACTION):
    """The official recipe: fine-tuning terms at full weight from the first fine-tuning iteration."""
