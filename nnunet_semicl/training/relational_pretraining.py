"""``nnUNetTrainerRelationalPretraining``: the phases, heads and queues that ACTION (and ACTION++) and
MONA (and ARCO) share (methods.md sections 3.2-3.3 and 5).

One nnU-Net training runs in phases (decision 4 of methods.md), a function of the epoch, so ``--c``
resumes in the right phase:

* ``global``: ISD-style relational KL between the student's and the EMA teacher's pooled bottleneck
  embeddings, against a FIFO queue of teacher embeddings (ACTION's stage i);
* ``local``: the same on windows of the output logits, plus the global term (stage ii; MONA's stage 1
  is this phase alone);
* ``finetune``: the method's own terms (:meth:`finetune_losses`), computed on a pixel representation
  from the ``rep`` head; at its start the teacher restarts from the student (as in the official code).
  With ``relational_in_finetune`` (ACTION, ACTION++) the global and local terms run here too, gated and
  ramped like every unsupervised term: the distillation without pre-training phases (docs/methods/action.md).

Only what a configuration uses is built: no relational head, EMA twin or queue when no phase runs its
term, no representation head when there is no fine-tuning.

Pre-training uses photometric strong views only (ISD); fine-tuning the full strong augmentation.
The method subclasses set the phase fractions and add their fine-tuning terms.
"""
from typing import Dict, Tuple

import torch

from nnunet_semicl.augment import StrongAugmentation
from nnunet_semicl.losses.relational import relational_kl_loss
from nnunet_semicl.modules.heads import RepresentationHead, select_representation_taps
from nnunet_semicl.modules.queues import RingBuffer
from nnunet_semicl.modules.relational_heads import GlobalRelationalHead, LocalRelationalHead
from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised
from nnunet_semicl.training.step_context import StepContext


class nnUNetTrainerRelationalPretraining(nnUNetTrainerSemiSupervised):
    """Relational pre-training, then fine-tuning with the method's terms (not a trainer to run itself).

    A method sets ``global_phase_fraction`` and ``local_phase_fraction`` (its phases as fractions of
    nnU-Net's ``num_epochs``) and implements :meth:`finetune_losses`."""
    # ---- relational distillation (ACTION stages i and ii; paper values) --------------------------
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
    relational_in_finetune = False    # True: the global and local terms also run during fine-tuning (ACTION's
                                      # default recipe: the distillation alongside the fine-tuning terms)
    # ---- pixel representation of the fine-tuning's contrastive terms -----------------------------
    representation_dim = None         # None: 512 in 2D, 128 in 3D
    representation_stride = 4         # representation at >= 1/4 resolution in-plane (ReCo's feature stride)
    representation_max_voxels = 16384  # ... and at most this many voxels per sample (3D memory bound)
    representation_activation = False  # ACTION's head: two linear layers
    rep_head_teacher = False           # True: an EMA twin of the rep head (ACTION++'s SAACL, MONA/ARCO's banks)
    uses_features = True
    term_weights = {**nnUNetTrainerSemiSupervised.term_weights, "global": "global_weight", "local": "local_weight"}

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

    def has_finetune(self) -> bool:
        return self.phase_starts()[1] < self.num_epochs

    def uses_global_term(self) -> bool:
        """Whether any phase runs the global relational term (the local phase runs it too)."""
        e_local, e_fine = self.phase_starts()
        return e_fine > 0 or (self.relational_in_finetune and self.has_finetune())

    def uses_local_term(self) -> bool:
        e_local, e_fine = self.phase_starts()
        return e_fine > e_local or (self.relational_in_finetune and self.has_finetune())

    def term_runs(self, term: str) -> bool:
        if term == "global":
            return self.uses_global_term()
        if term == "local":
            return self.uses_local_term()
        # every other term is a fine-tuning term (and may be off altogether: the base class decides)
        return term == "sup" or (self.has_finetune() and super().term_runs(term))

    def earliest_unsup_step(self) -> int:
        return self.phase_starts()[1] * self.num_iterations_per_epoch

    def relational_weight(self, weight: float, phase_start_epoch: int) -> float:
        """A pre-training term's weight now. The relational terms are unsupervised terms too: off until the
        warm-up gate opens, then ramped from the later of the gate and the start of the phase that adds them
        (the papers' _noRampUp variants: full weight from iteration 0): the warm-up rule without exception;
        before the gate a pre-training step is a cheap supervised step (measurements in docs/trainers.md)."""
        return weight * self.term_scale(phase_start_epoch * self.num_iterations_per_epoch)

    def unsup_start_text(self) -> str:
        if self.global_step >= self.earliest_unsup_step():
            return super().unsup_start_text()
        return (f"Relational pre-training terms start now (phase {self.phase()}), fine-tuning terms at iteration "
                f"{self.unsup_start_step()}")

    def uses_unlabeled_now(self) -> bool:
        if self.phase() == "finetune":
            return super().uses_unlabeled_now()
        return self.term_scale(0) > 0   # pre-training: the global term is on once the gate opened

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        _, e_fine = self.phase_starts()
        if self.current_epoch == e_fine and e_fine > 0:
            # fine-tuning starts from the pre-trained student; its teacher restarts from it (official code)
            self.sync_teachers()
            self.print_to_log_file("Fine-tuning starts; teacher re-initialised from the student")
        self.print_to_log_file(f"{type(self).__name__} phase: {self.phase()}")

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
        channels = self.tap_channels()
        heads = {}
        if self.uses_global_term():
            heads["global"] = GlobalRelationalHead(channels[0], self.default_dim(self.global_dim),
                                                   pool_cells=self.global_pool_cells, spatial_dims=self.spatial_dims)
        if self.uses_local_term():
            heads["local"] = LocalRelationalHead(self.label_manager.num_segmentation_heads, self.local_window_fraction,
                                                 self.local_pooled or (8 if self.spatial_dims == 2 else 4))
        if self.has_finetune():
            rep_dim = self.default_dim(self.representation_dim)
            heads["rep"] = RepresentationHead(channels[: self.representation_taps() + 1], rep_dim, rep_dim,
                                              self.spatial_dims, activation=self.representation_activation)
        return heads

    def build_head_teachers(self):
        # the rep head's EMA twin only for methods whose fine-tuning needs teacher representations
        wanted = ("global", "local") + (("rep",) if self.rep_head_teacher else ())
        return tuple(n for n in wanted if n in self.heads)

    def build_state(self):
        state = super().build_state()
        if "global" in self.heads:
            state["global_queue"] = RingBuffer(self.relational_queue_size, (self.default_dim(self.global_dim),))
        if "local" in self.heads:
            n_win, emb = self.heads["local"].window_layout(self.configuration_manager.patch_size)
            state["local_queue"] = RingBuffer(self.relational_queue_size, (n_win, emb))
        return state

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
            teacher_logits = ctx.teacher_logits
            if self.phase() == "finetune":
                # the student sees the full strong view (CutMix, warp): windows compare like with like once the
                # teacher's weak-view logits follow the same mixing and geometry
                teacher_logits, _ = self.augmentation_for_step().replay(ctx.strong_params, teacher_logits.float())
            teacher = self.head_teachers["local"].model.project(teacher_logits)
        queue = self.state_modules["local_queue"]
        tau_s, tau_t = self.relational_temperatures()
        loss = relational_kl_loss(student, teacher, queue.get()[0].permute(1, 0, 2), tau_s, tau_t)
        queue.push(teacher.float(), gather=True)
        return loss

    def representation(self, ctx: StepContext) -> torch.Tensor:
        return self.heads["rep"](ctx.features[: self.representation_taps() + 1])

    def compute_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        phase = self.phase()
        if phase == "finetune":
            terms = self.finetune_losses(ctx)
            if self.relational_in_finetune:
                terms["global"] = self.unsup_weight(self.global_weight) * self.global_distillation(ctx)
                terms["local"] = self.unsup_weight(self.local_weight) * self.local_distillation(ctx)
            return terms
        terms = {"sup": self.pretrain_supervised_weight * self.supervised_loss(ctx),
                 "global": self.relational_weight(self.global_weight, 0) * self.global_distillation(ctx)}
        if phase == "local":
            terms["local"] = self.relational_weight(self.local_weight, self.phase_starts()[0]) * \
                self.local_distillation(ctx)
        return terms

    def finetune_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """The method's weighted loss terms during fine-tuning."""
        raise NotImplementedError
