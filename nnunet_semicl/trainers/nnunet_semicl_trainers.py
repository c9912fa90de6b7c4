# Re-exports for nnU-Net's trainer lookup (nnUNet_extTrainer). Absolute imports only: nnU-Net imports
# this file as a top-level module. The classes keep their real module paths, so they pickle.
# The names are the methods, the baselines and the papers' literal recipes (docs/trainers.md, naming rule);
# ablations are setting keys (`nnunet_semicl split ... --set KEY=VALUE`); names of earlier versions are in
# nnunet_semicl/trainers_legacy (NNUNET_SEMICL_LEGACY_TRAINERS=1), so their results folders still predict.
from nnunet_semicl.training.action import nnUNetTrainerACTION, nnUNetTrainerACTION_paper  # noqa: F401
from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper  # noqa: F401
from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly  # noqa: F401
from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
from nnunet_semicl.training.mona import (nnUNetTrainerARCO, nnUNetTrainerARCO_paper, nnUNetTrainerARCO_SAG,  # noqa: F401
                                         nnUNetTrainerMONA, nnUNetTrainerMONA_paper)
from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel  # noqa: F401
