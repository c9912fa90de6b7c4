"""Read intermediate features of a network with forward hooks (no fork of the architecture).

Hooks fire inside the wrapped module's forward, so they also work through DDP and torch.compile
wrappers, and gradients flow through the captured tensors.
"""
from typing import List, Sequence

import torch
from torch import nn

from nnunet_semicl.modules.ema import unwrap


class FeatureTaps:
    """Captures the outputs of ``modules`` at every forward; ``features`` is in the given order."""

    def __init__(self, modules: Sequence[nn.Module]):
        self._outputs: List = [None] * len(modules)
        self._handles = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(modules)]

    def _make_hook(self, i):
        def hook(_module, _inputs, output):
            self._outputs[i] = output
        return hook

    @property
    def features(self) -> List[torch.Tensor]:
        if any(o is None for o in self._outputs):
            raise RuntimeError("FeatureTaps: no forward pass has been recorded since the last clear()")
        return list(self._outputs)

    def clear(self) -> None:
        self._outputs = [None] * len(self._outputs)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def unet_tap_modules(network: nn.Module) -> List[nn.Module]:
    """Modules whose outputs form the multi-scale representation of an nnU-Net U-Net.

    Returns ``[bottleneck, decoder stage 0, ..., decoder stage S-1]``: lowest resolution first, the
    last one at full resolution. Works for PlainConvUNet and ResidualEncoderUNet (encoder with
    ``stages``, UNetDecoder with ``stages``) of dynamic_network_architectures.
    """
    net = unwrap(network)
    try:
        bottleneck = net.encoder.stages[-1]
        decoder_stages = list(net.decoder.stages)
    except AttributeError as e:
        raise TypeError(f"{type(net).__name__} does not look like an nnU-Net U-Net (needs encoder.stages and "
                        f"decoder.stages); feature taps cannot be attached") from e
    return [bottleneck, *decoder_stages]


def unet_tap_channels(network: nn.Module) -> List[int]:
    """Output channels of the modules returned by :func:`unet_tap_modules`."""
    net = unwrap(network)
    enc = net.encoder
    chans = list(enc.output_channels) if hasattr(enc, "output_channels") else None
    if chans is None:
        raise TypeError(f"{type(net).__name__}.encoder has no output_channels")
    # decoder stage s mixes the upsampled lower stage with encoder skip -(s+2); it outputs that skip's channels
    n_dec = len(net.decoder.stages)
    return [chans[-1]] + [chans[-(s + 2)] for s in range(n_dec)]
