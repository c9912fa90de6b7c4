import copy

import pytest
import torch
from torch import nn

from nnunet_semicl.modules.ema import EMATeacher, unwrap
from nnunet_semicl.modules.feature_taps import FeatureTaps, unet_tap_channels, unet_tap_modules


def small_unet(dim=2, deep_supervision=True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    strides = [[1] * dim] + [[2] * dim] * 3
    return PlainConvUNet(1, 4, [4, 8, 16, 16], conv, 3, strides, 1, 3, 1, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                         deep_supervision=deep_supervision)


class WithCounter(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.tensor(7))

    def forward(self, x):
        return self.lin(x)


def test_ema_update_formula_and_integer_buffers():
    torch.manual_seed(0)
    student = WithCounter()
    teacher = EMATeacher(student, momentum=0.9)
    t0 = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        student.lin.weight.add_(1.0)
        student.count.fill_(11)
    teacher.update(student)
    expected = 0.9 * t0["lin.weight"] + 0.1 * student.lin.weight
    assert torch.allclose(teacher.model.lin.weight, expected, atol=1e-6)
    assert int(teacher.model.count) == 11  # integer buffers are copied, not averaged
    teacher.update(student, momentum=0.0)
    assert torch.equal(teacher.model.lin.weight, student.lin.weight)


def test_ema_teacher_is_frozen_and_stays_in_eval():
    student = WithCounter()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training
    out = teacher(torch.randn(4, 3))
    assert not out.requires_grad
    with pytest.raises(ValueError):
        EMATeacher(student, momentum=1.5)


def test_ema_sync_and_unwrap_ddp_like():
    student = WithCounter()
    teacher = EMATeacher(student)
    with torch.no_grad():
        student.lin.weight.mul_(3)
    teacher.sync(student)
    assert torch.equal(teacher.model.lin.weight, student.lin.weight)

    class Wrapper(nn.Module):  # torch.compile-like wrapper
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m
    assert unwrap(Wrapper(student)) is student


@pytest.mark.parametrize("dim", [2, 3])
def test_taps_capture_decoder_features_with_gradients(dim):
    torch.manual_seed(0)
    net = small_unet(dim)
    teacher = EMATeacher(net)                 # copied BEFORE hooks exist
    taps = FeatureTaps(unet_tap_modules(net))
    x = torch.randn(2, 1, *([16] * dim))
    out = net(x)
    feats = taps.features
    assert [f.shape[1] for f in feats] == unet_tap_channels(net) == [16, 16, 8, 4]
    assert feats[-1].shape[2:] == x.shape[2:]            # last tap is full resolution
    assert feats[0].shape[2:] == torch.Size([2] * dim)   # bottleneck at 1/8
    feats[1].sum().backward()
    assert net.encoder.stages[0][0].convs[0].conv.weight.grad is not None
    # the teacher has no hooks: running it does not overwrite the student's captured features
    taps.clear()
    teacher(x)
    with pytest.raises(RuntimeError):
        taps.features
    assert all(len(m._forward_hooks) == 0 for m in teacher.model.modules())
    # deepcopy AFTER hooks would copy them: that is why the order matters
    assert sum(len(m._forward_hooks) for m in copy.deepcopy(net).modules()) > 0
    taps.remove()
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
    assert isinstance(out, list) and len(out) == 3  # one output per decoder stage


def test_tap_modules_reject_non_unet():
    with pytest.raises(TypeError):
        unet_tap_modules(nn.Linear(2, 2))
