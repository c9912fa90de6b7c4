"""nnU-Net's own training restricted to the labeled cases of a semi-supervised setting.

This is the fair lower bound for every semi-supervised trainer (same plans, same preprocessing, same
augmentation, same schedule) and the base class of all our trainers: it owns the case sets, the
schedule overrides of a setting, and checkpoint I/O.
"""
import os
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_semicl.data.splits import (PLANS_BLOCK, CaseSets, SplitError,
                                       check_folds_against_unlabeled, check_trainer_overrides, default_folds,
                                       default_save_every, read_folds, resolve_case_sets, save_json,
                                       truly_unlabeled_cases)

class nnUNetTrainerLabeledOnly(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.case_sets: Optional[CaseSets] = None
        self._apply_setting_overrides()

    # ------------------------------------------------------------------------------------------
    # setting
    # ------------------------------------------------------------------------------------------
    @property
    def semicl_block(self) -> dict:
        return self.plans_manager.plans.get(PLANS_BLOCK, {}) or {}

    def _apply_setting_overrides(self) -> None:
        overrides = self.semicl_block.get("trainer", {}) or {}
        check_trainer_overrides(overrides, f"plans '{self.plans_manager.plans_name}'")
        for k, v in overrides.items():
            setattr(self, k, v)
        if overrides:
            self.print_to_log_file(f"Trainer settings from the plans' '{PLANS_BLOCK}' block: {overrides}")
        if "save_every" not in overrides and self.save_every > default_save_every(self.num_epochs):
            # nnU-Net saves every 50 epochs: a short schedule would never write checkpoint_latest for --c
            self.save_every = default_save_every(self.num_epochs)
            self.print_to_log_file(f"checkpoint_latest.pth every {self.save_every} epoch(s) (scaled to the "
                                   f"{self.num_epochs}-epoch schedule; `nnunet_semicl split --save-every N` sets it)")

    def do_split(self):
        # Truly unlabeled images must never be validation cases: if nnU-Net is about to create its
        # default 5-fold split, create it over the annotated cases only (identical otherwise).
        unlabeled_only = truly_unlabeled_cases(self.dataset_json)
        splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if self.fold != "all" and unlabeled_only and not isfile(splits_file):
            if self.dataset_class is None:
                from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
                self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
            ids = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
            save_json(default_folds(ids, unlabeled_only), splits_file)
            self.print_to_log_file("Created a 5-fold split over the annotated cases (images without annotation "
                                   "train in every fold):", splits_file)
        tr_keys, val_keys = super().do_split()
        if unlabeled_only and self.fold != "all":
            folds = read_folds(self.preprocessed_dataset_folder_base)
            if folds is not None and int(self.fold) < len(folds):
                check_folds_against_unlabeled([folds[int(self.fold)]], unlabeled_only, splits_file)
        return tr_keys, val_keys

    def resolve_case_sets(self, tr_keys) -> CaseSets:
        sets = resolve_case_sets(self.plans_manager.plans, self.dataset_json, self.preprocessed_dataset_folder_base,
                                 self.fold, tr_keys, self.plans_manager.dataset_name)
        if self.case_sets is not None and (self.case_sets.labeled, self.case_sets.unlabeled) != \
                (sets.labeled, sets.unlabeled):
            raise SplitError(f"The labeled/unlabeled split of this run changed since its checkpoint was written "
                             f"({sets.source}). Restore the original split file, or start a new run (another "
                             f"setting name) instead of continuing with --c.")
        self.case_sets = sets
        self.print_to_log_file(f"Semi-supervised case sets from {sets.source}: {len(sets.labeled)} labeled, "
                               f"{len(sets.unlabeled)} unlabeled training cases")
        return sets

    def get_tr_and_val_datasets(self):
        tr_keys, val_keys = self.do_split()
        sets = self.resolve_case_sets(tr_keys)
        prev = self.folder_with_segs_from_previous_stage
        dataset_tr = self.dataset_class(self.preprocessed_dataset_folder, list(sets.labeled),
                                        folder_with_segs_from_previous_stage=prev)
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=prev)
        return dataset_tr, dataset_val

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def _unwrapped_network(self):
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def semicl_state_dict(self) -> dict:
        """Extra state saved under ``checkpoint['semicl']`` (plain tensors, lists and dicts only)."""
        cs = self.case_sets
        return {"case_sets": None if cs is None else {"labeled": list(cs.labeled), "unlabeled": list(cs.unlabeled),
                                                      "source": cs.source}}

    def load_semicl_state_dict(self, state: dict) -> None:
        cs = (state or {}).get("case_sets")
        if cs is not None:
            self.case_sets = CaseSets(tuple(cs["labeled"]), tuple(cs["unlabeled"]), cs.get("source", "checkpoint"))

    def save_checkpoint(self, filename: str) -> None:
        # Same keys as nnU-Net 2.8.1 (so stock nnUNetv2_predict loads it) plus 'semicl'. Written to a
        # temporary file first: a crash while saving never destroys the previous checkpoint.
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self._unwrapped_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "semicl": self.semicl_state_dict(),
        }
        tmp = filename + ".tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # Accepts a path or an already loaded dict (nnU-Net 2.8.1's dict branch raises NameError).
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            checkpoint = filename_or_checkpoint
        else:
            if not isfile(filename_or_checkpoint):
                raise FileNotFoundError(f"Checkpoint {filename_or_checkpoint} does not exist.")
            checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        net = self._unwrapped_network()
        own_keys = net.state_dict().keys()
        weights = {}
        for k, v in checkpoint["network_weights"].items():
            weights[k[7:] if k not in own_keys and k.startswith("module.") else k] = v
        net.load_state_dict(weights)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.load_semicl_state_dict(checkpoint.get("semicl", {}))
