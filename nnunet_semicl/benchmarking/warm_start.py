"""Benchmark-only trainers for ``nnunet_semicl benchmark accuracy``: ``<trainer>_warmStart``.

Each is the trainer unchanged, except that its network starts from **all** weights of a warm-start
checkpoint (the file named by ``$NNUNET_SEMICL_WARM_START``). nnU-Net's ``-pretrained_weights``
re-initialises the output (``seg_layers``) convolutions, which throws a short CPU schedule back to
nnU-Net's slow start (several hundred iterations of "all background"). The weights are loaded at
the end of ``initialize()``, before ``on_train_start`` synchronises the EMA teacher from the student,
so teacher and student start equal; heads, queues and the optimizer start fresh. A resumed run
(``--c``) then loads its own checkpoint over them.

Not registered with the package's trainer folder: the accuracy benchmark puts a one-line module
that re-exports these classes into its work folder and adds that folder to ``nnUNet_extTrainer``.
This module imports nnU-Net (it is loaded by nnU-Net's trainer lookup, never by the CLI).
"""
import os

from nnunet_semicl.training.action import nnUNetTrainerACTION
from nnunet_semicl.training.action_pp import nnUNetTrainerACTIONpp
from nnunet_semicl.training.labeled_only import nnUNetTrainerLabeledOnly, read_checkpoint
from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_semicl.training.mona import nnUNetTrainerARCO, nnUNetTrainerARCO_SAG, nnUNetTrainerMONA
from nnunet_semicl.training.pseudo_label import nnUNetTrainerPseudoLabel

WARM_START_ENV = "NNUNET_SEMICL_WARM_START"
SUFFIX = "_warmStart"


class _WarmStart:
    def initialize(self):
        super().initialize()
        path = os.environ.get(WARM_START_ENV, "")
        if not os.path.isfile(path):
            raise RuntimeError(f"{type(self).__name__}: ${WARM_START_ENV} must name the warm-start checkpoint "
                               f"(got {path!r}).")
        ckpt = read_checkpoint(path, map_location=self.device)  # weights_only=True: the file can be anyone's
        self._unwrapped_network().load_state_dict(ckpt["network_weights"])  # strict: same architecture
        self.print_to_log_file(f"Warm start: every network weight (output layers included) from {path}")


class nnUNetTrainerLabeledOnly_warmStart(_WarmStart, nnUNetTrainerLabeledOnly):
    pass


class nnUNetTrainerPseudoLabel_warmStart(_WarmStart, nnUNetTrainerPseudoLabel):
    pass


class nnUNetTrainerMeanTeacher_warmStart(_WarmStart, nnUNetTrainerMeanTeacher):
    pass


class nnUNetTrainerACTION_warmStart(_WarmStart, nnUNetTrainerACTION):
    pass


class nnUNetTrainerACTIONpp_warmStart(_WarmStart, nnUNetTrainerACTIONpp):
    pass


class nnUNetTrainerMONA_warmStart(_WarmStart, nnUNetTrainerMONA):
    pass


class nnUNetTrainerARCO_warmStart(_WarmStart, nnUNetTrainerARCO):
    pass


class nnUNetTrainerARCO_SAG_warmStart(_WarmStart, nnUNetTrainerARCO_SAG):
    pass


WARM_START_TRAINERS = {c.__name__[: -len(SUFFIX)]: c for c in (
    nnUNetTrainerLabeledOnly_warmStart, nnUNetTrainerPseudoLabel_warmStart, nnUNetTrainerMeanTeacher_warmStart,
    nnUNetTrainerACTION_warmStart, nnUNetTrainerACTIONpp_warmStart, nnUNetTrainerMONA_warmStart,
    nnUNetTrainerARCO_warmStart, nnUNetTrainerARCO_SAG_warmStart)}
