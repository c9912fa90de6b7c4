# This folder is what nnU-Net scans through ``nnUNet_extTrainer``. nnU-Net imports every module in it
# as a *top-level* module, so it must contain only ``nnunet_semicl_trainers.py`` (absolute imports only).
