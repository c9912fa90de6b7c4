"""Is this run given the right files? Plans of the dataset being trained, a ``--c`` checkpoint of the same
trainer, ``-pretrained_weights`` whose network fits (issue 31, row 6 and row 12).

nnU-Net checks none of these: it takes the data folder from the plans' ``dataset_name`` (so plans copied
from another dataset train that dataset's data), continues any checkpoint in the output folder, and
loads pretrained weights with ``weights_only=False``. Our trainers call these checks before anything is
trained or loaded. ``nnUNetv2_train`` passes neither the dataset asked for nor the pretrained weights to
the trainer, so they are read from its command line (``sys.argv``) when that is where we run.
"""
import os
import sys
from typing import Optional

from nnunet_semicl.errors import InputError

#: nnU-Net's load_pretrained_weights skips these keys (the output layers are trained anew)
PRETRAINED_SKIPPED = (".seg_layers.",)
_TRAIN_PROGRAMS = ("nnUNetv2_train", "run_training.py")


class IncompatibleRunError(InputError):
    """Plans, a checkpoint or pretrained weights that belong to another dataset, trainer or network."""


def _train_argv(argv=None) -> Optional[list]:
    argv = sys.argv if argv is None else argv
    if argv and os.path.basename(str(argv[0])) in _TRAIN_PROGRAMS:
        return [str(a) for a in argv]
    return None


def requested_dataset(argv=None) -> Optional[str]:
    """The dataset named on ``nnUNetv2_train``'s command line (its first argument) as Dataset<ID>_<name>."""
    args = _train_argv(argv)
    if not args or len(args) < 2 or args[1].startswith("-"):
        return None
    try:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        return maybe_convert_to_dataset_name(args[1])
    except Exception:   # nnU-Net itself reports a dataset it cannot find
        return None


def pretrained_weights_path(argv=None) -> Optional[str]:
    """``-pretrained_weights PATH`` (or ``=PATH``, or an abbreviation argparse accepts) of ``nnUNetv2_train``."""
    args = _train_argv(argv)
    if not args:
        return None
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if len(flag) >= 3 and "-pretrained_weights".startswith(flag):   # argparse takes unique prefixes
            if eq:
                return value
            return args[i + 1] if i + 1 < len(args) else None
    return None


def check_plans_dataset(plans_name: str, plans_dataset: str, plans_folder: str, dataset_json: dict,
                        requested: Optional[str]) -> None:
    """Refuse plans whose ``dataset_name`` is not the dataset being trained: the dataset asked for on the
    command line, or (without one) the dataset whose dataset.json the trainer was given."""
    from nnunet_semicl.files import load_json

    fix = (f"Use plans made for this dataset: plan it (`nnUNetv2_plan_and_preprocess -d <id>`), or transfer these "
           f"plans with `nnUNetv2_move_plans_between_datasets -s {plans_dataset} -t <id> -sp {plans_name} -tp "
           f"{plans_name}` (which rewrites dataset_name), then preprocess with them.")
    if requested and requested != plans_dataset:
        raise IncompatibleRunError(f"The plans '{plans_name}' belong to {plans_dataset} (their dataset_name), not "
                                   f"to {requested}, the dataset asked for: nnU-Net would train {plans_dataset}'s "
                                   f"data. {fix}")
    own = os.path.join(plans_folder, "dataset.json")
    if os.path.isfile(own) and load_json(own) != dataset_json:
        raise IncompatibleRunError(f"The plans '{plans_name}' belong to {plans_dataset} (their dataset_name), whose "
                                   f"{own} differs from the dataset.json of the dataset being trained: nnU-Net "
                                   f"would train {plans_dataset}'s data. {fix}")


def check_resumed_trainer(filename: str, checkpoint: dict, trainer_name: str) -> None:
    """``--c`` continues a run with the trainer that wrote it: other trainers have other state (heads, teacher,
    memory banks, schedule phases), and nnU-Net would mix the two runs silently."""
    saved = checkpoint.get("trainer_name")
    if saved is not None and saved != trainer_name:
        raise IncompatibleRunError(
            f"{filename} was written by {saved}, not {trainer_name}: --c continues a run with the trainer that "
            f"started it. Continue it with `-tr {saved}`; or train {trainer_name} without --c (into its own results "
            f"folder); or, to start {trainer_name} from that run's network, pass the file to "
            f"-pretrained_weights (without --c).")


def check_pretrained_weights(filename: str, checkpoint: dict, network_state: dict, trainer_name: str) -> str:
    """Pretrained weights from any nnU-Net trainer (stock or ours) are accepted when their network has every
    weight this trainer's network has, with the same shapes (nnU-Net's rule, output layers excepted); a
    message names the first mismatch otherwise. Returns the trainer that wrote them, for the log."""
    saved = checkpoint.get("trainer_name", "an unknown trainer")
    weights = checkpoint["network_weights"]
    wrong = []
    for key, value in network_state.items():
        if any(s in key for s in PRETRAINED_SKIPPED):
            continue
        theirs = weights.get(key)
        if theirs is None:
            wrong.append(f"{key} missing")
        elif tuple(theirs.shape) != tuple(value.shape):
            wrong.append(f"{key} {tuple(theirs.shape)} instead of {tuple(value.shape)}")
        if len(wrong) >= 3:
            break
    if wrong:
        config = (checkpoint.get("init_args") or {}).get("configuration", "?")
        raise IncompatibleRunError(
            f"-pretrained_weights {filename} (written by {saved}, configuration '{config}') do not fit the network "
            f"of {trainer_name}: {'; '.join(wrong)}. Pretrain with the same plans and configuration (the same -p and "
            f"configuration as this training; any of our trainers or nnU-Net's nnUNetTrainer build the same "
            f"network), or leave -pretrained_weights out.")
    return saved
