"""Run at interpreter start by ``nnunet_semicl_autoregister.pth`` (installed into site-packages).

It only appends our trainer folder to the ``nnUNet_extTrainer`` environment variable, so that the
stock ``nnUNetv2_train -tr nnUNetTrainerACTIONpp`` and ``nnUNetv2_predict`` find our trainers with
no set-up. Opt out with ``NNUNET_SEMICL_AUTOREGISTER=0``. It must never raise: a failing ``.pth``
line would print an error at every Python start.
"""
import os

try:
    if os.environ.get("NNUNET_SEMICL_AUTOREGISTER", "1").strip().lower() not in ("0", "false", "no", "off"):
        from nnunet_semicl import register_ext_trainer_path

        register_ext_trainer_path()
except Exception:  # pragma: no cover - defensive: never break interpreter start-up
    pass
