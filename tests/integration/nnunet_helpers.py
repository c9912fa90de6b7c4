"""Helpers to drive nnU-Net's own entry points from tests (in-process where that saves import time)."""
import os
import sys
from contextlib import contextmanager

import torch

from tests.conftest import TRAIN_ENV


@contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stock_train(*argv: str):
    """``nnUNetv2_train ARGV -device cpu`` through nnU-Net's console-script function, in this process."""
    from nnunetv2.run.run_training import run_training_entry

    old_argv = sys.argv
    sys.argv = ["nnUNetv2_train", *map(str, argv), "-device", "cpu"]
    try:
        with env(**TRAIN_ENV):
            run_training_entry()
    finally:
        sys.argv = old_argv
        torch.set_num_threads(2)


def make_trainer(dataset_id, configuration, fold, trainer, plans, continue_training=False):
    """The trainer exactly as ``nnUNetv2_train`` builds it (stock lookup by class name)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(dataset_id), configuration, fold, trainer, plans, continue_training,
                                 torch.device("cpu"))


def train_epochs(trainer, n):
    """nnU-Net's run_training loop for the first ``n`` epochs, then a latest checkpoint (an interruption)."""
    trainer.on_train_start()
    for _ in range(n):
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
        trainer.on_train_epoch_end(outs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            vals = [trainer.validation_step(next(trainer.dataloader_val))
                    for _ in range(trainer.num_val_iterations_per_epoch)]
            trainer.on_validation_epoch_end(vals)
        trainer.on_epoch_end()
    # nnU-Net saves before on_epoch_end advances the epoch (on_train_end compensates the same way)
    trainer.current_epoch -= 1
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
    trainer.current_epoch += 1


def output_folder(phantom, trainer, configuration, fold=0, plans=None):
    return os.path.join(phantom.results, phantom.name, f"{trainer}__{plans or phantom.plans}__{configuration}",
                        f"fold_{fold}")


def tree_digest(*folders):
    """{path: sha256 of its bytes (or '<dir>')} of everything under ``folders``: equal before and after a
    refused command means it wrote, changed and removed nothing."""
    import hashlib

    out = {}
    for root in folders:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "<dir>"
            for f in filenames:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out
