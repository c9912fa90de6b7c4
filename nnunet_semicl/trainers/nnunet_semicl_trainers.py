# Re-exports for nnU-Net's trainer lookup (nnUNet_extTrainer). Absolute imports only: nnU-Net imports
# this file as a top-level module. The classes keep their real module paths, so they pickle.
from nnunet_semicl.training.action import (nnUNetTrainerACTION, nnUNetTrainerACTION_noPretrain,  # noqa: F401
                                           nnUNetTrainerACTION_noRampUp, nnUNetTrainerACTION_phased,
                                           nnUNetTrainerACTIONPretrain)
from nnunet_semicl.training.action_pp import (nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_momentum09,  # noqa: F401
                                              nnUNetTrainerACTIONpp_noPretrain, nnUNetTrainerACTIONpp_noRampUp,
                                              nnUNetTrainerACTIONpp_officialATS, nnUNetTrainerACTIONpp_phased,
                                              nnUNetTrainerACTIONpp_pixelMask)
from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly  # noqa: F401
from nnunet_semicl.training.mona import (nnUNetTrainerARCO, nnUNetTrainerARCO_indexStrata,  # noqa: F401
                                         nnUNetTrainerARCO_noRampUp, nnUNetTrainerARCO_SAG, nnUNetTrainerMONA,
                                         nnUNetTrainerMONA_noRampUp, nnUNetTrainerMONA_teacherEquivariance)
from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
from nnunet_semicl.training.pseudo_label import (nnUNetTrainerPseudoLabel, nnUNetTrainerPseudoLabel_noRampUp,  # noqa: F401
                                                 nnUNetTrainerPseudoLabel_pixelMask)
from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised  # noqa: F401
