"""nnU-Net's own training restricted to the labeled cases of a semi-supervised setting.

This is the fair lower bound for every semi-supervised trainer (same plans, same preprocessing, same
augmentation, same schedule) and the base class of all our trainers: it owns the case sets, the
schedule overrides of a setting, and checkpoint I/O.
"""
import os
import shutil
import tempfile
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semicl.data.splits import (PLANS_BLOCK, UNLABELED_KEY, CaseSets, SplitError,
                                       check_folds_against_unlabeled, check_resumed_case_sets,
                                       default_folds, default_save_every, read_folds,
                                       resolve_case_sets, setting_block, truly_unlabeled_cases)
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import load_json, save_json
from nnunet_semicl.modules.ema import unwrap
from nnunet_semicl.seeding import SEED_ENV, seed_everything, seed_from_env
from nnunet_semicl.training.compatibility import (check_plans_dataset, check_pretrained_weights,
                                                  check_resumed_trainer, pretrained_weights_path, requested_dataset)

#: written into the run's fold folder: which cases were labeled and unlabeled, and from which setting
CASE_SETS_FILE = "semicl_case_sets.json"


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and what to do instead (an InputError:
    ``nnunet_semicl`` commands report it without a traceback)."""


def _numpy_safe_globals() -> list:
    """numpy types nnU-Net checkpoints hold (logged metrics are numpy scalars), for ``weights_only`` loads."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
              np.uint32, np.uint64, np.bool_)
    return [scalar, _reconstruct, np.ndarray, np.dtype] + [type(np.dtype(t)) for t in dtypes]


def read_checkpoint(filename: str, map_location=None) -> dict:
    """``torch.load(weights_only=True)`` of an nnU-Net checkpoint: tensors, plain Python values and numpy
    scalars only, never arbitrary objects (a checkpoint file can come from anywhere). A missing,
    truncated or damaged file is a :class:`CheckpointError` that names it."""
    if not os.path.isfile(filename):
        raise CheckpointError(f"Checkpoint {filename} does not exist.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[-1][:300]
        raise CheckpointError(f"Cannot read the checkpoint {filename} ({type(e).__name__}: {detail}). The file is "
                              f"truncated or damaged (e.g. a full disk or an interrupted copy), or holds objects a "
                              f"safe load refuses.{_alternatives(filename)}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"{filename} is not an nnU-Net checkpoint (no 'network_weights').{_alternatives(filename)}")
    return checkpoint


def _alternatives(filename: str) -> str:
    folder, name = os.path.split(filename)
    others = [f for f in ("checkpoint_latest.pth", "checkpoint_best.pth")
              if f != name and os.path.isfile(os.path.join(folder, f))]
    move = f"move it away (`mv {filename} {filename}.damaged`)"
    if name in ("checkpoint_final.pth", "checkpoint_latest.pth") and others:
        return (f" To continue from {others[0]} instead, {move} and run with --c again (nnU-Net's --c takes "
                f"checkpoint_final, then checkpoint_latest, then checkpoint_best); or start over by running without --c.")
    return f" {move} and start over by running without --c (the run's folder is then overwritten)."


class CheckpointSaveError(CheckpointError):
    """A checkpoint that could not be written (a full disk, a read-only folder); the previous one is unchanged."""


class _ByteCounter:
    """A write-only file that counts what ``torch.save`` writes (the size a checkpoint needs, without a disk)."""

    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 20:.0f} MB"


def save_atomically(obj: dict, filename: str) -> None:
    """``torch.save`` to ``<filename>.tmp``, flushed to disk, then renamed over ``filename``: a process killed
    while saving (SIGKILL, power loss) leaves the previous checkpoint complete and loadable.

    A save that fails (a full disk: ENOSPC, a quota, a read-only folder) removes ``<filename>.tmp``, keeps the
    previous ``filename`` and raises one :class:`CheckpointSaveError` that names the folder, the space the
    checkpoint needs and the space free."""
    tmp = filename + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise CheckpointSaveError(_save_failure_message(obj, filename, e)) from None


def _save_failure_message(obj: dict, filename: str, error: OSError) -> str:
    folder = os.path.dirname(os.path.abspath(filename))
    counter = _ByteCounter()
    try:
        torch.save(obj, counter)
        needed = f"about {_mb(counter.n)}"
    except Exception:
        needed = "an unknown amount"
    try:
        free = _mb(shutil.disk_usage(folder).free) + " free"
    except OSError:
        free = "free space unknown"
    kept = (f"The previous {os.path.basename(filename)} is unchanged" if os.path.isfile(filename)
            else f"No {os.path.basename(filename)} was written")
    return (f"Could not save the checkpoint {filename} ({error.strerror or error}): {folder} needs {needed} for "
            f"it ({free}). {kept} and no temporary file is left. Free space there (or point nnUNet_results at a "
            f"larger disk and move the results folder), then continue the training with --c.")


class nnUNetTrainerLabeledOnly(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net reads the data of the plans' dataset_name: refuse another dataset's plans (copied with -p)
        check_plans_dataset(self.plans_manager.plans_name, self.plans_manager.dataset_name,
                            self.preprocessed_dataset_folder_base, dataset_json, requested_dataset())
        self.case_sets: Optional[CaseSets] = None
        self._apply_setting_overrides()

    # ------------------------------------------------------------------------------------------
    # an optional seed (NNUNET_SEMICL_SEED): paired comparisons between trainers (seeding.py)
    # ------------------------------------------------------------------------------------------
    def initialize(self):
        seed = seed_from_env()
        first = not self.was_initialized
        if seed is not None and first:
            seed_everything(seed)   # the network's initialisation (built by nnU-Net's initialize)
        super().initialize()
        if first:
            self.check_pretrained_weights(pretrained_weights_path())

    def check_pretrained_weights(self, filename: Optional[str]) -> None:
        """``nnUNetv2_train -pretrained_weights FILE`` loads FILE right after ``initialize()``, with
        ``weights_only=False`` and an assertion per mismatching weight: read it safely here first, and refuse
        weights that do not fit this network (compatibility.check_pretrained_weights says which are accepted)."""
        if not filename:
            return
        checkpoint = read_checkpoint(filename, map_location="cpu")
        saved = check_pretrained_weights(filename, checkpoint, self._unwrapped_network().state_dict(),
                                         type(self).__name__)
        self.print_to_log_file(f"-pretrained_weights: {filename}, written by {saved}")

    def on_train_start(self):
        super().on_train_start()
        seed = seed_from_env()
        if seed is not None:
            # again once everything is built: trainers that build more (heads, loaders) than LabeledOnly then
            # start their first step from the same generator state; a --c continuation from its epoch
            seed_everything(seed + self.current_epoch)
            self.print_to_log_file(f"Random generators seeded from {SEED_ENV}={seed} (epoch {self.current_epoch})")

    # ------------------------------------------------------------------------------------------
    # setting
    # ------------------------------------------------------------------------------------------
    @property
    def semicl_block(self) -> dict:
        """The setting of this run: the plans' block (-p), or the dataset's default setting (see data.splits)."""
        return setting_block(self.plans_manager.plans, self.dataset_json, self.preprocessed_dataset_folder_base) or {}

    def _apply_setting_overrides(self) -> None:
        """Apply the setting's trainer block (``split --epochs ... --set KEY=VALUE``): each key checked by name and
        type against this trainer class (data/overrides.py), logged, and recorded in the results folder."""
        from nnunet_semicl.data.overrides import OVERRIDES_FILE, related_trainers, validate_overrides

        block = self.semicl_block
        where = block.get("default_file") or f"plans '{self.plans_manager.plans_name}' ('{PLANS_BLOCK}' block)"
        overrides, skipped = validate_overrides(type(self), block.get("trainer", {}) or {}, where,
                                                related_trainers(nnUNetTrainerLabeledOnly))
        defaults = {k: getattr(self, k) for k in overrides}
        for k, v in overrides.items():
            setattr(self, k, v)
        if overrides:
            self.print_to_log_file(f"Trainer settings from {where} (recorded in {OVERRIDES_FILE}): "
                                   + ", ".join(f"{k}: {defaults[k]!r} -> {v!r}" for k, v in overrides.items()))
        if skipped:
            self.print_to_log_file(f"Setting keys not applied to {type(self).__name__}: "
                                   + "; ".join(f"{k} ({why})" for k, why in skipped.items()))
        if self.local_rank == 0:
            save_json({"trainer": type(self).__name__, "setting": block.get("setting"), "source": where,
                       "overrides": {k: {"default": defaults[k], "value": v} for k, v in overrides.items()},
                       "not_applied": skipped}, join(self.output_folder, OVERRIDES_FILE))
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
        self._check_unlabeled_images_preprocessed(unlabeled_only)
        # images without annotation are training (unlabeled) cases of every fold, also when they were added
        # with add-unlabeled after splits_final.json was written
        late = sorted(set(unlabeled_only) - set(tr_keys) - set(val_keys))
        if late:
            tr_keys = list(tr_keys) + late
            self.print_to_log_file(f"{len(late)} images without annotation that {splits_file} does not list (added "
                                   f"after it) train as unlabeled cases of fold {self.fold}.")
        return tr_keys, val_keys

    def _check_unlabeled_images_preprocessed(self, unlabeled_only) -> None:
        """Images added with add-unlabeled must be preprocessed before a training can use them."""
        from nnunetv2.paths import nnUNet_raw

        name = self.plans_manager.dataset_name
        config = self.configuration_manager.data_identifier.split("_", 1)[-1]
        fix = (f"Run `nnUNetv2_plan_and_preprocess -d {name} -c {config} --verify_dataset_integrity` (WITHOUT --clean; "
               f"with the -pl planner these plans came from, if not the default) first.")
        raw_json = os.path.join(nnUNet_raw, name, "dataset.json") if nnUNet_raw else None
        if raw_json and isfile(raw_json):
            not_yet = sorted(set(load_json(raw_json).get(UNLABELED_KEY, [])) - set(unlabeled_only))
            if not_yet:
                raise SplitError(f"{raw_json} lists {len(not_yet)} images without annotation that were added after "
                                 f"preprocessing ({not_yet[:3]}...), so this training would not use them. {fix}")
        if not unlabeled_only:
            return
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        ids = set(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        missing = sorted(set(unlabeled_only) - ids)
        if missing:
            raise SplitError(f"{self.preprocessed_dataset_folder} lacks {len(missing)} images without annotation that "
                             f"dataset.json lists ({missing[:3]}...). {fix}")

    def resolve_case_sets(self, tr_keys) -> CaseSets:
        sets = resolve_case_sets(self.plans_manager.plans, self.dataset_json, self.preprocessed_dataset_folder_base,
                                 self.fold, tr_keys, self.plans_manager.dataset_name)
        if self.case_sets is not None:  # continued with --c: the checkpoint recorded the run's sets
            added = check_resumed_case_sets(self.case_sets, sets, truly_unlabeled_cases(self.dataset_json))
            if added:
                self.print_to_log_file(f"--c: {len(added)} images without annotation added since the checkpoint join "
                                       f"the unlabeled cases: {list(added)[:10]}")
        self.case_sets = sets
        block = self.semicl_block
        if "default_file" in block:
            self.print_to_log_file(f"No setting selected with -p: using the dataset's default setting "
                                   f"'{block['setting']}' ({block['default_file']}). Select another with "
                                   f"-p {self.plans_manager.plans_name}_<setting> (docs/splits.md).")
        self.print_to_log_file(f"Semi-supervised case sets from {sets.source}: {len(sets.labeled)} labeled, "
                               f"{len(sets.unlabeled)} unlabeled training cases (recorded in {CASE_SETS_FILE})")
        if self.local_rank == 0:
            save_json({"setting": block.get("setting"), "default_setting": "default_file" in block,
                       "source": sets.source, "fold": self.fold, "labeled": list(sets.labeled),
                       "unlabeled": list(sets.unlabeled)}, join(self.output_folder, CASE_SETS_FILE))
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
        return unwrap(self.network)

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
        # nnU-Net builds its checkpoint dict (whatever keys its version writes, so that stock nnUNetv2_predict
        # loads it); we capture it in memory, add 'semicl' and write it once with save_atomically: a crash while
        # saving never destroys the previous checkpoint, and a save needs the checkpoint's size free, not twice it.
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)   # writes nothing (and says so when checkpointing is off)
            return
        checkpoint = self._nnunet_checkpoint(filename)
        checkpoint["semicl"] = self.semicl_state_dict()
        try:
            save_atomically(checkpoint, filename)
        except CheckpointSaveError as e:
            try:
                self.print_to_log_file(str(e))
            except OSError:   # the log is on the same full disk
                pass
            raise

    def _nnunet_checkpoint(self, filename: str) -> dict:
        """The dict nnU-Net's ``save_checkpoint`` passes to ``torch.save``, taken instead of written."""
        captured = []
        real_save = torch.save
        torch.save = lambda obj, *args, **kwargs: captured.append(obj)   # nnU-Net calls torch.save(checkpoint, f)
        try:
            super().save_checkpoint(filename)
        finally:
            torch.save = real_save
        if len(captured) != 1 or not isinstance(captured[0], dict):
            raise RuntimeError(f"nnU-Net's save_checkpoint called torch.save {len(captured)} times (expected once "
                               f"with the checkpoint dict): this nnU-Net version is not supported.")
        return captured[0]

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # A path is read here first with weights_only=True (a CheckpointError names a missing, damaged or
        # unsafe file); only a file that passed is handed to nnU-Net, which restores everything it saved.
        # A loaded dict reaches nnU-Net through a temporary file (2.8.1's dict branch raises NameError).
        if isinstance(filename_or_checkpoint, dict):
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "checkpoint.pth")
                torch.save(filename_or_checkpoint, path)
                self.load_checkpoint(path)
            return
        if not self.was_initialized:
            self.initialize()
        checkpoint = read_checkpoint(filename_or_checkpoint, map_location=self.device)
        check_resumed_trainer(filename_or_checkpoint, checkpoint, type(self).__name__)
        self._log_resume_source(filename_or_checkpoint, checkpoint)
        semicl = checkpoint.get("semicl", {})
        del checkpoint   # nnU-Net reads the file again: do not hold two copies of the weights
        super().load_checkpoint(os.fspath(filename_or_checkpoint))   # nnU-Net takes a str path only
        self.load_semicl_state_dict(semicl)

    def _log_resume_source(self, filename: str, checkpoint: dict) -> None:
        """Say which checkpoint ``--c`` continues from when it is not the latest one (nnU-Net is silent)."""
        folder, name = os.path.split(filename)
        if name == "checkpoint_best.pth" and not any(isfile(join(folder, f)) for f in
                                                     ("checkpoint_latest.pth", "checkpoint_final.pth")):
            self.print_to_log_file(f"--c: no checkpoint_latest.pth in {folder}; continuing from checkpoint_best.pth, "
                                   f"written after epoch {int(checkpoint.get('current_epoch', 1)) - 1} (the best "
                                   f"EMA pseudo Dice so far): the epochs after it are trained again.")

    # ------------------------------------------------------------------------------------------
    # non-finite input and loss
    # ------------------------------------------------------------------------------------------
    def check_finite_input(self, batch: dict, stream: str = "labeled") -> None:
        """Stop before a step or a validation batch uses NaN/Inf input, naming each case that holds it."""
        x = batch["data"]
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if bool(finite.all()):
            return
        keys = list(batch.get("keys", []))
        bad = [str(keys[i]) if i < len(keys) else f"#{i}" for i in torch.nonzero(~finite).flatten().tolist()]
        raise FloatingPointError(
            f"Non-finite (NaN/Inf) input in the {stream} batch at epoch {self.current_epoch}: case(s) {bad}. Their "
            f"preprocessed data hold NaN/Inf, so training stopped before they could reach the weights (no "
            f"checkpoint_final is written). Fix these cases' images in nnUNet_raw (or remove the cases), then run "
            f"nnUNetv2_plan_and_preprocess again.")

    def check_finite_loss(self, loss, keys: List[str]) -> None:
        if not np.all(np.isfinite(loss)):
            raise FloatingPointError(f"Non-finite training loss {loss} at epoch {self.current_epoch} with finite "
                                     f"inputs; cases in this batch: {list(keys)}. Lower the learning rate or check "
                                     f"the loss settings.")

    def train_step(self, batch: dict) -> dict:
        self.check_finite_input(batch)
        out = super().train_step(batch)
        self.check_finite_loss(out["loss"], batch.get("keys", []))
        return out

    def validation_step(self, batch: dict) -> dict:
        self.check_finite_input(batch, "validation")
        return super().validation_step(batch)
