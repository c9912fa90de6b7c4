"""``nnUNetTrainerPseudoLabel``: the confidence-weighted pseudo-label loss alone.

It is the common core of ACTION, ACTION++, MONA and ARCO (methods.md 2.5): EMA-teacher
pseudo-labels on the weak view, a strong view (CutMix, colour, blur, warp) for the student, and
``L = L_sup + L_unsup``. Every method's gain should be measured against it.
"""
from nnunet_semicl.training.semi_supervised import nnUNetTrainerSemiSupervised


class nnUNetTrainerPseudoLabel(nnUNetTrainerSemiSupervised):
    pass
