"""``StepContext``: everything one training iteration of a semi-supervised trainer computed, handed to
``compute_losses`` (see ``training/semi_supervised.py`` for the iteration)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from nnunet_semicl.augment import StrongViewParams


def full_resolution(outputs):
    """The full-resolution tensor of an nnU-Net output or target (a list of scales under deep
    supervision, full resolution first)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


@dataclass
class StepContext:
    """Everything one training iteration computed, handed to ``compute_losses``."""
    x_labeled: torch.Tensor
    y_labeled: object                      # nnU-Net target (a list of scales under deep supervision)
    x_weak: torch.Tensor                   # unlabeled batch, weak view (what the teacher saw; with the
                                           # labeled copy-paste, mixed with labeled images where paste_mask)
    keys: Sequence[str] = ()               # case ids of the labeled + unlabeled batch (for errors)
    teacher_logits: Optional[torch.Tensor] = None          # teacher on x_weak (full resolution)
    teacher_logits_labeled: Optional[torch.Tensor] = None  # teacher on x_labeled (teacher_sees_labeled)
    teacher_probs: Optional[torch.Tensor] = None
    pseudo_label: Optional[torch.Tensor] = None
    confidence: Optional[torch.Tensor] = None
    teacher_features: Optional[List[torch.Tensor]] = None          # taps of the teacher on x_weak
    teacher_features_labeled: Optional[List[torch.Tensor]] = None  # ... on x_labeled (teacher_sees_labeled)
    x_strong: Optional[torch.Tensor] = None
    strong_targets: Dict[str, torch.Tensor] = field(default_factory=dict)
    strong_params: Optional[StrongViewParams] = None  # the strong view's draws (StrongAugmentation.replay)
    valid: Optional[torch.Tensor] = None   # [Bu, *spatial] pixels of the strong view with content
    paste_mask: Optional[torch.Tensor] = None  # [Bu, *spatial] weak-view pixels showing a labeled image (copy-paste)
    outputs: object = None                 # student outputs on cat(labeled, strong)
    features: Optional[List[torch.Tensor]] = None  # student taps on cat(labeled, strong)
    _student_probs: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def n_labeled(self) -> int:
        return self.x_labeled.shape[0]

    def labeled_outputs(self):
        n = self.n_labeled
        return [o[:n] for o in self.outputs] if isinstance(self.outputs, (list, tuple)) else self.outputs[:n]

    def full_logits(self) -> torch.Tensor:
        """Student logits on ``cat(labeled, strong unlabeled)`` at full resolution."""
        return full_resolution(self.outputs)

    def student_probs(self) -> torch.Tensor:
        """Softmax of the student's full-resolution logits (detached, fp32): computed once per step, however many
        terms read it."""
        if self._student_probs is None:
            self._student_probs = torch.softmax(self.full_logits().detach().float(), 1)
        return self._student_probs

    def unlabeled_logits(self) -> torch.Tensor:
        return self.full_logits()[self.n_labeled:]

    def labeled_target_full(self) -> torch.Tensor:
        """Full-resolution labeled target ``[Bl, *spatial]`` (long)."""
        return full_resolution(self.y_labeled)[:, 0].long()

    def labeled_valid(self, ignore_label: Optional[int]) -> torch.Tensor:
        """Bool ``[Bl, *spatial]``: labeled pixels with a class, i.e. all of them unless they carry the
        ignore label (``label_manager.ignore_label``, None when the dataset has none)."""
        y = self.labeled_target_full()
        if ignore_label is None:
            return torch.ones_like(y, dtype=torch.bool)
        return y != ignore_label
