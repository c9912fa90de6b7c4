# nnU-Net scans this folder (NNUNET_SEMICL_LEGACY_TRAINERS=1) and imports each module in it as a *top-level* module:
# it must contain only nnunet_semicl_legacy_trainers.py (absolute imports only).
