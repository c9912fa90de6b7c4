"""Exponential-moving-average (mean) teacher."""
import copy

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):      # torch.compile's OptimizedModule
            module = module._orig_mod
        elif hasattr(module, "module") and isinstance(module, (nn.parallel.DistributedDataParallel,
                                                                nn.DataParallel)):
            module = module.module
        else:
            return module


class EMATeacher(nn.Module):
    """A frozen copy of a student updated as ``t <- m * t + (1 - m) * s`` after every optimizer step.

    Create it *before* registering forward hooks on the student: ``copy.deepcopy`` copies hooks.
    Floating-point buffers are averaged like parameters; integer buffers (e.g. counters) are copied.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.model = copy.deepcopy(unwrap(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):  # the teacher always stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float = None) -> None:
        m = self.momentum if momentum is None else momentum
        s_state = unwrap(student).state_dict()
        for name, t in self.model.state_dict().items():
            s = s_state[name].detach()
            if t.dtype.is_floating_point:
                t.mul_(m).add_(s.to(t.dtype), alpha=1.0 - m)
            else:
                t.copy_(s)

    @torch.no_grad()
    def sync(self, student: nn.Module) -> None:
        """Copy the student's weights (used at the start of training and at phase boundaries)."""
        self.model.load_state_dict(unwrap(student).state_dict())

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)
