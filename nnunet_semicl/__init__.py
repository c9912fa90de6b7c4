"""nnunet_semicl: semi-supervised contrastive trainers for nnU-Net v2.

This module is imported at every interpreter start through the ``.pth`` auto-registration
(see ``_autoregister``), so it must stay free of heavy imports (no torch, no nnunetv2).
"""
import os

__version__ = "0.1.0"

#: Folder that nnU-Net scans (through ``nnUNet_extTrainer``) to find our trainers by class name.
#: It holds one module that re-exports our trainer classes with absolute imports and nothing else.
TRAINERS_FOLDER_NAME = "trainers"


def ext_trainer_path() -> str:
    """Absolute path of the folder to put into ``nnUNet_extTrainer``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TRAINERS_FOLDER_NAME)


def register_ext_trainer_path(environ=None) -> bool:
    """Append our trainer folder to ``nnUNet_extTrainer`` (``os.pathsep``-separated) if it is not there.

    Returns True when the variable was changed. Folders the user already listed are kept, in order.
    """
    environ = os.environ if environ is None else environ
    ours = ext_trainer_path()
    current = environ.get("nnUNet_extTrainer", "")
    parts = [p for p in current.split(os.pathsep) if p.strip()]
    if any(os.path.normpath(p) == os.path.normpath(ours) for p in parts):
        return False
    environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [ours])
    return True
