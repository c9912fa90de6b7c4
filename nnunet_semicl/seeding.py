"""An optional random seed for a training, from the environment (``NNUNET_SEMICL_SEED``).

nnU-Net has no seed option: every run draws its own network initialisation and batches. Comparing two
trainers on a few labels then mixes the methods' difference with luck in the first epochs (docs/demo.md:
in 9 of 14 unpaired demo runs ACTION++'s supervised warm-up found every class later than LabeledOnly's,
although before the warm-up gate the two trainers take the same step). With the same seed, our trainers
start from the same weights and, on CPU (augmentation in the training process), draw the same labeled
batches: a semi-supervised trainer's warm-up then repeats LabeledOnly's step for step, and the comparison
measures what the unsupervised terms add. With augmentation workers (``nnUNet_n_proc_DA`` > 0, CUDA) the
batches still differ; the initialisation is shared.

No nnU-Net import.
"""
import os
import random
from typing import Mapping, Optional

import numpy as np
import torch

from nnunet_semicl.errors import InputError

SEED_ENV = "NNUNET_SEMICL_SEED"


def seed_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The seed that ``NNUNET_SEMICL_SEED`` asks for, None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(SEED_ENV, "").strip()
    return parse_seed(value, f"{SEED_ENV}={value}", f"unset {SEED_ENV}") if value else None


def parse_seed(value, given_as: str, alternative: str) -> int:
    """``value`` as a seed (an integer in numpy's range 0 .. 2**32 - 1); an :class:`InputError` naming
    ``given_as`` (how the user gave it) otherwise."""
    try:
        seed = int(str(value).strip())
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed < 2 ** 32:
        raise InputError(f"{given_as}: a seed must be a whole number from 0 to 2**32 - 1 (numpy's range), e.g. "
                         f"12345; or {alternative} for nnU-Net's unseeded behaviour.")
    return seed


def seed_everything(seed: int) -> None:
    """Seed every generator a training draws from: Python's, numpy's global one (nnU-Net's data loader and
    batchgenerators' transforms) and torch's (initialisation, our augmentation), CUDA included."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)   # also seeds every CUDA device
