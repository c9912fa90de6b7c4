# Trainer names of earlier versions, so that their results folders still predict (and --c continues them as they
# were trained). Not exported by default: nnU-Net scans this folder only with NNUNET_SEMICL_LEGACY_TRAINERS=1
# (docs/installation.md). Absolute imports only: nnU-Net imports this file as a top-level module. Each is today's
# class with the settings that name stood for; new runs use the current names and setting keys instead.
from nnunet_semicl.training.action import ThreeStagesMixin, nnUNetTrainerACTION, nnUNetTrainerACTION_paper
from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp, nnUNetTrainerACTIONpp_paper
from nnunet_semicl.training.mona import nnUNetTrainerARCO, nnUNetTrainerARCO_paper, nnUNetTrainerMONA, \
    nnUNetTrainerMONA_paper
from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel
from nnunet_semicl.training.semi_supervised import PapersScheduleMixin, nnUNetTrainerSemiSupervised  # noqa: F401


class _FineTuneOnly:
    """ACTION / ACTION++ as they were before the distillation became part of the default: no relational term."""
    relational_in_finetune = False


class _ReleasedBeforeMonaFix:
    """MONA / ARCO as they were before the head and the equivariance mask followed the released code."""
    representation_activation = True


class nnUNetTrainerACTION_noRampUp(nnUNetTrainerACTION_paper):
    pass


class nnUNetTrainerACTIONpp_noRampUp(nnUNetTrainerACTIONpp_paper):
    pass


class nnUNetTrainerMONA_noRampUp(_ReleasedBeforeMonaFix, nnUNetTrainerMONA_paper):
    pass


class nnUNetTrainerARCO_noRampUp(_ReleasedBeforeMonaFix, nnUNetTrainerARCO_paper):
    pass


class nnUNetTrainerPseudoLabel_noRampUp(PapersScheduleMixin, nnUNetTrainerPseudoLabel):
    pass


class nnUNetTrainerPseudoLabel_pixelMask(nnUNetTrainerPseudoLabel):
    pseudo_label_pixel_mask = True


class nnUNetTrainerACTION_noPretrain(_FineTuneOnly, nnUNetTrainerACTION):
    pass


class nnUNetTrainerACTIONpp_noPretrain(_FineTuneOnly, nnUNetTrainerACTIONpp):
    pass


class nnUNetTrainerACTION_phased(_FineTuneOnly, ThreeStagesMixin, nnUNetTrainerACTION):
    pass


class nnUNetTrainerACTIONpp_phased(_FineTuneOnly, ThreeStagesMixin, nnUNetTrainerACTIONpp):
    pass


class nnUNetTrainerACTIONPretrain(_FineTuneOnly, ThreeStagesMixin, nnUNetTrainerACTION):
    global_phase_fraction = 0.5
    local_phase_fraction = 0.5


class nnUNetTrainerACTIONpp_officialATS(_FineTuneOnly, nnUNetTrainerACTIONpp):
    ats_per_epoch = True
    ats_period_fraction = 0.1


class nnUNetTrainerACTIONpp_momentum09(_FineTuneOnly, nnUNetTrainerACTIONpp):
    unsup_momentum = 0.9


class nnUNetTrainerACTIONpp_pixelMask(_FineTuneOnly, nnUNetTrainerACTIONpp):
    pseudo_label_pixel_mask = True


class nnUNetTrainerARCO_indexStrata(_ReleasedBeforeMonaFix, nnUNetTrainerARCO):
    sampler_strata = "index"


class nnUNetTrainerMONA_teacherEquivariance(_ReleasedBeforeMonaFix, nnUNetTrainerMONA):
    equivariance_target = "teacher"
