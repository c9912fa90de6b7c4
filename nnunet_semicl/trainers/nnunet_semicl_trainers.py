# Re-exports for nnU-Net's trainer lookup (nnUNet_extTrainer). Absolute imports only: nnU-Net imports
# this file as a top-level module. The classes keep their real module paths, so they pickle.
from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly  # noqa: F401
from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel  # noqa: F401
from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised  # noqa: F401
