"""nnunet_semicl: semi-supervised contrastive trainers for nnU-Net v2.

This module is imported at every interpreter start through the ``.pth`` auto-registration
(see ``_autoregister``), so it must stay free of heavy imports (no torch, no nnunetv2).
"""
import os

__version__ = "0.1.0"

#: Folder that nnU-Net scans (through ``nnUNet_extTrainer``) to find our trainers by class name.
#: It holds one module that re-exports our trainer classes with absolute imports and nothing else.
TRAINERS_FOLDER_NAME = "trainers"
#: Trainer names of earlier versions (results folders trained under them still predict); scanned only when
#: ``NNUNET_SEMICL_LEGACY_TRAINERS`` is set to 1.
LEGACY_TRAINERS_FOLDER_NAME = "trainers_legacy"
LEGACY_ENV = "NNUNET_SEMICL_LEGACY_TRAINERS"


def ext_trainer_path(legacy: bool = False) -> str:
    """Absolute path of the folder to put into ``nnUNet_extTrainer`` (``legacy``: the earlier versions' names)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        LEGACY_TRAINERS_FOLDER_NAME if legacy else TRAINERS_FOLDER_NAME)


def register_ext_trainer_path(environ=None) -> bool:
    """Append our trainer folder (and, with ``NNUNET_SEMICL_LEGACY_TRAINERS=1``, the legacy names' folder) to
    ``nnUNet_extTrainer`` (``os.pathsep``-separated) if it is not there.

    Returns True when the variable was changed. Folders the user already listed are kept, in order.
    """
    environ = os.environ if environ is None else environ
    wanted = [ext_trainer_path()]
    if environ.get(LEGACY_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        wanted.append(ext_trainer_path(legacy=True))
    current = environ.get("nnUNet_extTrainer", "")
    parts = [p for p in current.split(os.pathsep) if p.strip()]
    listed = {os.path.normpath(p) for p in parts}
    missing = [w for w in wanted if os.path.normpath(w) not in listed]
    if not missing:
        return False
    environ["nnUNet_extTrainer"] = os.pathsep.join(parts + missing)
    return True
