"""``nnUNetTrainerSemiSupervised``: the machinery every semi-supervised trainer of this package shares.

Per training iteration (one backward, one optimizer step):

1. a labeled batch from nnU-Net's own loader (restricted to the labeled cases) and an unlabeled
   batch from a second loader (weak, geometric-only augmentation, no foreground oversampling);
2. the EMA teacher predicts the weak unlabeled view -> probabilities, pseudo-labels, confidence
   (and decoder features when a method needs them);
3. the strong view is built on the device from the weak one; its geometric part moves the
   pseudo-labels and every other per-pixel target identically;
4. ONE student forward over ``cat(labeled, strong unlabeled)`` (nnU-Net uses instance norm, so the
   two halves do not interact; one forward also keeps DistributedDataParallel simple); decoder
   features are captured by forward hooks;
5. ``step_losses`` returns the weighted loss terms; their sum is backpropagated inside nnU-Net's
   AMP / GradScaler branching, gradients are clipped over network and heads together, and the
   teacher (and teacher twins of heads) follow by EMA.

Heads, teacher, queues and memory banks are owned by the trainer, outside ``self.network``: the
checkpoint's ``network_weights`` stays a plain nnU-Net network that ``nnUNetv2_predict`` loads strictly,
and our state goes under ``checkpoint['semicl']``.

What one iteration computed travels in a ``StepContext`` (``training/step_context.py``); when the
unsupervised terms turn on and how much they weigh is ``TrainingDynamicsMixin``
(``training/training_dynamics.py``); the opt-in mechanisms of other methods (UniMatch's feature perturbation) are
``PeerMechanismsMixin`` (``training/peer_mechanisms.py``).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnunet_semicl.augment import StrongAugmentation, copy_paste_masks
from nnunet_semicl.data.unlabeled_loader import nnUNetUnlabeledDataLoader, weak_transforms
from nnunet_semicl.files import TRAINING_SUMMARY_FILE, save_json
from nnunet_semicl.losses.pseudo_label_losses import confidence_masked_ce, confidence_weighted_ce, masked_soft_dice
from nnunet_semicl.modules.distributed import average_gradients, broadcast_module
from nnunet_semicl.modules.distribution_alignment import DistributionAlignment
from nnunet_semicl.modules.ema import EMATeacher, unwrap
from nnunet_semicl.modules.feature_taps import FeatureTaps, unet_tap_channels, unet_tap_modules
from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly
from nnunet_semicl.training.loss_logger import TERM_PREFIX, SemiCLLocalLogger
from nnunet_semicl.training.peer_mechanisms import PeerMechanismsMixin
from nnunet_semicl.training.step_context import StepContext, full_resolution
from nnunet_semicl.training.training_dynamics import TrainingDynamicsMixin


class nnUNetTrainerSemiSupervised(TrainingDynamicsMixin, PeerMechanismsMixin, nnUNetTrainerLabeledOnly):
    """Shared machinery; as it stands it trains with the pseudo-label loss (see nnUNetTrainerPseudoLabel)."""

    # ---- hyperparameters (class attributes; variants are subclasses) ------------------------------
    ema_momentum = 0.99               # methods.md 2.3
    unlabeled_batch_size = None       # None: the planned (per-GPU) batch size
    supervised_weight = 1.0           # the ACTION/ACTION++ papers' fine-tuning 0.5: their _noRampUp variants
    pseudo_label_weight = 1.0         # the papers' weight; ramped (below) unless a _noRampUp variant
    confidence_threshold = 0.97       # rho_b of the pseudo-label loss (methods.md 2.5)
    pseudo_label_dice_weight = 0.0    # opt-in: + this x per-class Dice on the confident pseudo-labels (UniMatch,
                                      # BCP, AD-MT), so a rare class is not swamped by background in the pixel CE
                                      # (0.5, with copy-paste and argmax alignment: worse on ACDC, performance.md 3)
    pseudo_label_pixel_mask = False   # opt-in: only confident pixels get the pseudo-label CE (FixMatch, UniMatch)
                                      # instead of ACTION's per-image weight rho_b over every pixel (demo.md)
    labeled_copy_paste = False        # opt-in (measured as above). BCP: once the unsupervised terms are on, each
                                      # unlabeled image shares its
    copy_paste_side = 2.0 / 3.0       # patch with a labeled one (a box of this side, inside or outside), and
                                      # the pasted pixels are supervised by the ground truth: every
                                      # unsupervised step carries true labels of every class
    grad_clip_norm = 12.0             # nnU-Net's value, applied to network + heads together
    uses_features = False             # tap decoder features of student and teacher
    allow_compile = False             # hooks + EMA copy + custom step: not yet verified with torch.compile
    #: the method's table of loss terms: each term and the class attribute holding its weight at full strength
    #: (the unsupervised ones are multiplied by the schedule's ramp); logged per epoch, drawn in progress.png
    term_weights = {"sup": "supervised_weight", "unsup": "pseudo_label_weight", "fp": "feature_perturbation_weight"}

    @property
    def loss_terms(self):
        """The terms logged per epoch and drawn in progress.png: those some phase of this configuration computes."""
        return tuple(t for t in self.term_weights if self.term_runs(t))

    def term_runs(self, term: str) -> bool:
        """Whether some phase of this configuration computes ``term`` (methods with phases refine this)."""
        if term == "fp":   # an opt-in term: nothing is built or logged for it when it is off
            return self.feature_perturbation_weight > 0
        return True

    def active_terms(self) -> Dict[str, float]:
        """Every term some phase of this configuration computes, with its weight at full strength."""
        return {t: float(getattr(self, a)) for t, a in self.term_weights.items() if self.term_runs(t)}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.strong_augmentation = self.build_strong_augmentation()
        self.teacher: Optional[EMATeacher] = None
        self.heads = nn.ModuleDict()           # trainable, optimised with the network
        self.head_teachers = nn.ModuleDict()   # EMA twins of some heads
        self.state_modules = nn.ModuleDict()   # buffers only: queues, memory banks, centroids
        self.student_taps: Optional[FeatureTaps] = None
        self.teacher_taps: Optional[FeatureTaps] = None
        self.dataloader_unlabeled = None
        self.global_step = 0
        self.labeled_shares: Optional[torch.Tensor] = None  # class shares of the labeled cases (on_train_start)
        self._pseudo_label_shares: List[torch.Tensor] = []  # per step (on the device), for the epoch's collapse check
        self.logger.local_logger = _upgrade_logger(self.logger.local_logger, self.loss_terms)

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    def build_strong_augmentation(self) -> StrongAugmentation:
        return StrongAugmentation()

    def build_heads(self) -> Dict[str, nn.Module]:
        """Trainable heads (none for the baselines)."""
        return {}

    def build_head_teachers(self) -> Sequence[str]:
        """Names of heads that get an EMA twin."""
        return ()

    def build_state(self) -> Dict[str, nn.Module]:
        """Buffer-only modules saved in checkpoints (queues, memory banks, centroids)."""
        if not self.distribution_alignment:
            return {}
        return {"alignment": DistributionAlignment(self.label_manager.num_segmentation_heads,
                                                   momentum=self.alignment_momentum,
                                                   max_ratio=self.alignment_max_ratio,
                                                   statistic=self.alignment_statistic,
                                                   boost_only=self.alignment_boost_only)}

    def tap_channels(self) -> List[int]:
        return unet_tap_channels(self.network)

    def tap_spatial_shapes(self) -> List[List[int]]:
        """Spatial size of each tap (bottleneck first) for the configured patch size."""
        patch = np.array(self.configuration_manager.patch_size)
        strides = np.cumprod(np.vstack(self.configuration_manager.pool_op_kernel_sizes), axis=0)
        n_dec = len(unwrap(self.network).decoder.stages)
        # decoder stage s has the resolution of encoder stage -(s+2); the bottleneck is the last stage
        stages = [len(strides) - 1] + [len(strides) - 2 - s for s in range(n_dec)]
        return [list((patch // strides[i]).astype(int)) for i in stages]

    def _do_i_compile(self):
        return super()._do_i_compile() and self.allow_compile

    def initialize(self):
        super().initialize()  # network (+DDP), an optimizer over the network only, loss, dataset class
        student = unwrap(self.network)
        # the teacher is copied BEFORE hooks are registered on the student (deepcopy copies hooks)
        self.teacher = EMATeacher(student, self.ema_momentum).to(self.device)
        self.teacher.model.decoder.deep_supervision = False
        self.heads = nn.ModuleDict(self.build_heads()).to(self.device)
        self.head_teachers = nn.ModuleDict({n: EMATeacher(self.heads[n], self.ema_momentum)
                                            for n in self.build_head_teachers()}).to(self.device)
        self.state_modules = nn.ModuleDict(self.build_state()).to(self.device)
        if self.is_ddp:  # heads are created per rank: start from rank 0's weights
            broadcast_module(self.heads)
            self.sync_teachers()
        if self.uses_features:
            self.student_taps = FeatureTaps(unet_tap_modules(student))
            self.teacher_taps = FeatureTaps(unet_tap_modules(self.teacher.model))
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self.initial_momentum = self.optimizer.param_groups[0]["momentum"]   # before a checkpoint's state is loaded
        n_head = sum(p.numel() for p in self.heads.parameters())
        self.print_to_log_file(f"{type(self).__name__}: EMA teacher (m={self.ema_momentum}), heads "
                               f"{list(self.heads.keys())} ({n_head} parameters), state {list(self.state_modules.keys())}")

    def configure_optimizers(self):
        if len(self.heads) == 0:
            return super().configure_optimizers()
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
        params = list(self.network.parameters()) + list(self.heads.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ------------------------------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------------------------------
    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()   # also resolves self.case_sets
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        return dl_tr, dl_val

    def get_unlabeled_dataloader(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        transforms = weak_transforms(self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
            ignore_label=lm.ignore_label))
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(self.case_sets.unlabeled),
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        batch_size = int(self.unlabeled_batch_size or self.batch_size)
        dl = nnUNetUnlabeledDataLoader(dataset, batch_size, initial_patch_size, self.configuration_manager.patch_size,
                                       lm, transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            gen = SingleThreadedAugmenter(dl, None)
        else:
            gen = NonDetMultiThreadedAugmenter(dl, None, num_processes=n_proc, num_cached=max(6, n_proc // 2),
                                               seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)
        next(gen)
        return gen

    # ------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0:
            # -pretrained_weights are loaded into the student after initialize(): start the teacher from them
            self.sync_teachers()
        self.global_step = self.current_epoch * self.num_iterations_per_epoch
        self.start_training_dynamics()

    def sync_teachers(self):
        self.teacher.sync(self.network)
        for name, t in self.head_teachers.items():
            t.sync(self.heads[name])

    def on_train_end(self):
        super().on_train_end()   # saves checkpoint_final.pth (with semicl.unsupervised_terms_ran)
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        summary = self.training_summary()
        self.print_to_log_file(summary["message"])   # the final line of the training log
        if self.local_rank == 0:
            save_json(summary, join(self.output_folder, TRAINING_SUMMARY_FILE))

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.heads.train()

    # ------------------------------------------------------------------------------------------
    # one iteration
    # ------------------------------------------------------------------------------------------
    def teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher_taps is not None:
            self.teacher_taps.clear()
        return full_resolution(self.teacher(x))

    def teacher_sees_labeled(self) -> bool:
        """Whether the teacher also processes the labeled batch this iteration (for teacher views of it)."""
        return False

    def augmentation_for_step(self) -> StrongAugmentation:
        """The strong view used this iteration (methods with phases may use a different one per phase)."""
        return self.strong_augmentation

    def strong_view_targets(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """Per-pixel tensors that must follow the strong view's mixing and geometry."""
        return {"pseudo_label": ctx.pseudo_label, "confidence": ctx.confidence}

    def prepare_step(self, batch: dict, unlabeled: dict) -> StepContext:
        dev = self.device
        y = batch["target"]
        y = [t.to(dev, non_blocking=True) for t in y] if isinstance(y, list) else y.to(dev, non_blocking=True)
        ctx = StepContext(x_labeled=batch["data"].to(dev, non_blocking=True), y_labeled=y,
                          x_weak=unlabeled["data"].to(dev, non_blocking=True),
                          keys=list(batch.get("keys", [])) + list(unlabeled.get("keys", [])))
        if self.labeled_copy_paste and self.unsup_scale() > 0:
            ctx.x_weak, ctx.paste_mask, pasted_labels = self.copy_paste(ctx)
        k = ctx.n_labeled if self.teacher_sees_labeled() else 0
        x_teacher = torch.cat([ctx.x_labeled, ctx.x_weak]) if k else ctx.x_weak
        logits = self.teacher_forward(x_teacher)  # one teacher forward for both streams
        ctx.teacher_logits, ctx.teacher_logits_labeled = logits[k:], (logits[:k] if k else None)
        if self.teacher_taps is not None:
            feats = self.teacher_taps.features
            ctx.teacher_features = [f[k:] for f in feats]
            ctx.teacher_features_labeled = [f[:k] for f in feats] if k else None
        unlabeled_pixels = None if ctx.paste_mask is None else ~ctx.paste_mask
        ctx.teacher_probs, ctx.pseudo_label, ctx.confidence = self.teacher_pseudo_labels(ctx.teacher_logits,
                                                                                           unlabeled_pixels)
        if ctx.paste_mask is not None:   # pasted pixels: the ground truth, with full confidence
            ctx.teacher_probs, ctx.pseudo_label, ctx.confidence = self.with_known_labels(
                ctx.teacher_probs, ctx.pseudo_label, ctx.confidence, ctx.paste_mask, pasted_labels)
        aug = self.augmentation_for_step()
        ctx.strong_params = aug.sample(ctx.x_weak)
        ctx.x_strong, ctx.strong_targets, ctx.valid = aug.apply(ctx.strong_params, ctx.x_weak,
                                                                self.strong_view_targets(ctx))
        if self.student_taps is not None:
            self.student_taps.clear()
        ctx.outputs = self.network(torch.cat([ctx.x_labeled, ctx.x_strong.to(ctx.x_labeled.dtype)]))
        if self.student_taps is not None:
            ctx.features = self.student_taps.features
        return ctx

    def copy_paste(self, ctx: StepContext):
        """Bidirectional labeled/unlabeled copy-paste of the weak unlabeled batch (BCP).

        Unlabeled image b is mixed with labeled image ``b mod Bl`` (``augment.copy_paste_masks``).
        Returns the mixed batch, the mask of labeled pixels and the labels to use there (-1 where
        the labeled image has the ignore label: those pixels get confidence 0)."""
        n_u = ctx.x_weak.shape[0]
        source = torch.arange(n_u, device=ctx.x_weak.device) % ctx.n_labeled
        mask = copy_paste_masks(n_u, ctx.x_weak.shape[2:], self.copy_paste_side, device=ctx.x_weak.device)
        x_mixed = torch.where(mask[:, None], ctx.x_labeled[source].to(ctx.x_weak.dtype), ctx.x_weak)
        labels = ctx.labeled_target_full()[source]
        if self.label_manager.has_ignore_label:
            labels = torch.where(labels == self.label_manager.ignore_label, torch.full_like(labels, -1), labels)
        return x_mixed, mask, labels

    @staticmethod
    def with_known_labels(probs, labels, confidence, mask, known):
        """Replace teacher outputs by one-hot ground truth where ``mask`` (and ``known`` >= 0); where the
        pasted ground truth is unknown (ignore label) the confidence is 0, so no loss uses the pixel."""
        k = probs.shape[1]
        use = mask & (known >= 0)
        onehot = torch.nn.functional.one_hot(known.clamp_min(0), k).movedim(-1, 1).to(probs.dtype)
        probs = torch.where(use[:, None], onehot, probs)
        labels = torch.where(use, known.to(labels.dtype), labels)
        confidence = torch.where(use, torch.ones_like(confidence),
                                 torch.where(mask, torch.zeros_like(confidence), confidence))
        return probs, labels, confidence

    def supervised_loss(self, ctx: StepContext) -> torch.Tensor:
        return self.loss(ctx.labeled_outputs(), ctx.y_labeled)

    def pseudo_label_loss(self, ctx: StepContext) -> torch.Tensor:
        """The pseudo-label loss of the student's strong view (targets moved with its geometry)."""
        t = ctx.strong_targets
        return self.pseudo_label_objective(ctx.unlabeled_logits(), t["pseudo_label"], t["confidence"], ctx.valid)

    def pseudo_label_objective(self, logits: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor,
                               valid: torch.Tensor) -> torch.Tensor:
        """This trainer's pseudo-label loss of ``logits`` against ``pseudo_label`` / ``confidence`` over the
        ``valid`` pixels: the confidence-weighted (or -masked) CE, plus the optional Dice on confident pixels."""
        ce = confidence_masked_ce if self.pseudo_label_pixel_mask else confidence_weighted_ce
        loss = ce(logits, pseudo_label, confidence, valid, self.confidence_threshold)
        if self.pseudo_label_dice_weight > 0:
            confident = valid & (confidence >= self.confidence_threshold)
            loss = loss + self.pseudo_label_dice_weight * masked_soft_dice(logits, pseudo_label, confident)
        return loss

    def compute_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """The method's weighted loss terms (``step_losses`` adds the shared opt-in ones). Keys must be in
        ``loss_terms``."""
        return {"sup": self.supervised_weight * self.supervised_loss(ctx),
                "unsup": self.unsup_weight(self.pseudo_label_weight, per_pixel=True) * self.pseudo_label_loss(ctx)}

    def step_losses(self, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """Every weighted loss term of an iteration with unlabeled data: the method's and the peers' opt-in ones."""
        return {**self.compute_losses(ctx), **self.peer_terms(ctx)}

    def trainable_parameters(self):
        return list(self.network.parameters()) + list(self.heads.parameters())

    def supervised_step(self, batch: dict) -> StepContext:
        """The warm-up's step: nnU-Net's supervised loss on the labeled batch alone (no teacher, no unlabeled data)."""
        dev = self.device
        y = batch["target"]
        y = [t.to(dev, non_blocking=True) for t in y] if isinstance(y, list) else y.to(dev, non_blocking=True)
        ctx = StepContext(x_labeled=batch["data"].to(dev, non_blocking=True), y_labeled=y,
                          x_weak=batch["data"][:0], keys=list(batch.get("keys", [])))
        if self.student_taps is not None:
            self.student_taps.clear()
        ctx.outputs = self.network(ctx.x_labeled)
        return ctx

    def train_step(self, batch: dict) -> dict:
        with_unlabeled = self.uses_unlabeled_now()
        unlabeled = next(self.dataloader_unlabeled) if with_unlabeled else None
        self.check_finite_input(batch)
        if unlabeled is not None:
            self.check_finite_input(unlabeled, "unlabeled")
        self.optimizer.zero_grad(set_to_none=True)
        self.apply_unsup_momentum()
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            if with_unlabeled:
                ctx = self.prepare_step(batch, unlabeled)
                terms = self.step_losses(ctx)
            else:
                ctx = self.supervised_step(batch)
                terms = {"sup": self.supervised_loss(ctx)}
            total = sum(terms.values())
        # the loss and every term in ONE device-to-host copy per step (each float(tensor) would wait for the device)
        host = torch.stack([total.detach().float()] + [v.detach().float() for v in terms.values()]).cpu()
        host_terms = dict(zip(terms, host[1:].tolist()))
        self._check_finite(host_terms, ctx)
        scaler = self.grad_scaler   # nnU-Net's GradScaler on CUDA, None on CPU
        (total if scaler is None else scaler.scale(total)).backward()
        average_gradients(self.heads.parameters())
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.grad_clip_norm)
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        self.after_optimizer_step(ctx)
        self.global_step += 1
        out = {"loss": host[0].numpy()}
        for t in self.loss_terms:
            out[TERM_PREFIX + t] = host_terms.get(t, float("nan"))
        return out

    def after_optimizer_step(self, ctx: StepContext) -> None:
        self.teacher.update(self.network)
        for name, t in self.head_teachers.items():
            t.update(self.heads[name])

    def _check_finite(self, values: Dict[str, float], ctx: StepContext) -> None:
        """Stop before a non-finite loss term reaches the weights (``values``: the terms' values on the host)."""
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
            inputs_finite = bool(torch.isfinite(ctx.x_labeled).all()) and bool(torch.isfinite(ctx.x_weak).all())
            hint = ("the input batch itself contains NaN/Inf: check the images of these cases in the raw data"
                    if not inputs_finite else "the inputs are finite: lower the learning rate or check the loss "
                                              "settings")
            raise FloatingPointError(f"Non-finite training loss term(s) {bad} at epoch {self.current_epoch}, "
                                     f"iteration {self.global_step}: {values}. Cases in this batch: "
                                     f"{list(ctx.keys)}; {hint}.")

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        for t in self.loss_terms:
            vals = np.array([o[TERM_PREFIX + t] for o in train_outputs], dtype=float)
            value = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            if self.is_ddp:
                import torch.distributed as dist
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.nanmean(gathered)) if np.isfinite(gathered).any() else float("nan")
            self.logger.log(TERM_PREFIX + t, value, self.current_epoch)

    def on_epoch_end(self):
        terms = {t: self.logger.get_value(TERM_PREFIX + t, step=-1) for t in self.loss_terms}
        self.print_to_log_file("loss terms", {k: round(v, 4) for k, v in terms.items()},
                               f"| unsupervised weight x{self.unsup_scale():.3f}")
        self.check_pseudo_label_shares()
        self.update_warmup_gate()   # before nnU-Net's on_epoch_end saves the checkpoint
        super().on_epoch_end()

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def semicl_state_dict(self) -> dict:
        state = super().semicl_state_dict()
        state.update({
            "teacher": self.teacher.model.state_dict() if self.teacher is not None else None,
            "heads": self.heads.state_dict(),
            "head_teachers": {n: t.model.state_dict() for n, t in self.head_teachers.items()},
            "state_modules": self.state_modules.state_dict(),
            "global_step": self.global_step,
            "unsup_gate_step": self.unsup_gate_step,   # also in "schedule"; read by tools and earlier versions
            "schedule": self.schedule.state_dict(),
            "unsupervised_terms_ran": self.unsupervised_terms_ran(),
        })
        return state

    def load_semicl_state_dict(self, state: dict) -> None:
        super().load_semicl_state_dict(state)
        state = state or {}
        if state.get("teacher") is None:
            # a checkpoint of another trainer (e.g. nnUNetTrainer): start the teacher from the student
            self.print_to_log_file("Checkpoint has no semi-supervised state: teacher and heads start fresh.")
            self.sync_teachers()
            return
        self.teacher.model.load_state_dict(state["teacher"])
        self.heads.load_state_dict(state["heads"])
        for n, t in self.head_teachers.items():
            t.model.load_state_dict(state["head_teachers"][n])
        missing, unexpected = self.state_modules.load_state_dict(state["state_modules"], strict=False)
        if unexpected:
            raise RuntimeError(f"The checkpoint's semi-supervised state has entries this trainer does not know: "
                               f"{unexpected}. Was it written by another trainer? Start a new run instead of --c.")
        if missing:  # e.g. a checkpoint written before the class-collapse guard existed
            self.print_to_log_file(f"Checkpoint lacks state {sorted(missing)}: those start fresh.")
        self.global_step = int(state.get("global_step", 0))
        self.schedule.load_state_dict(state.get("schedule") or {"gate_step": state.get("unsup_gate_step")})


def _upgrade_logger(local_logger, terms):
    """Replace nnU-Net's LocalLogger by ours, keeping whatever was logged already."""
    new = SemiCLLocalLogger(terms, verbose=getattr(local_logger, "verbose", False))
    for k, v in local_logger.my_fantastic_logging.items():
        new.my_fantastic_logging[k] = v
    return new


class PapersScheduleMixin:
    """The papers' literal recipe (``_noRampUp`` variants): every unsupervised term at full weight from the
    start of its phase, no warm-up, no ramp, no deep-supervision balance, no class-collapse guard, no
    labeled copy-paste, no Dice term on pseudo-labels. Put it first among the bases:
    ``class nnUNetTrainerX_noRampUp(PapersScheduleMixin, nnUNetTrainerX)``."""
    unsup_warmup = False
    labeled_copy_paste = False
    pseudo_label_dice_weight = 0.0
    rampup_fraction = 0.0
    balance_deep_supervision = False
    distribution_alignment = False
