"""Tests that need CUDA (marker ``cuda``; they skip without it). Run by the GPU check (issue 13):

    python -m pytest -m cuda tests/gpu

* every trainer runs a few AMP iterations on the real ACDC ``2d`` configuration that stock planning
  gives (benchmarks/gpu/plans/acdc_2d.json: patch 256 x 224, batch 56, 6-stage U-Net) on synthetic
  cases: finite losses, GradScaler enabled with a finite scale, the weights updated, MONA/ARCO's memory
  banks stored in float16;
* the samplers on CUDA: the Sample contract, unbiasedness (weighted inclusion z-scores) and the
  variance reduction of SG over uniform sampling, as on the CPU (tests/unit/test_stratified.py).

``NNUNET_SEMICL_GPU_CHECK_DRY_RUN=1`` (the check's dry run) uses a tiny configuration instead.
"""
import math
import os

import pytest
import torch

pytestmark = pytest.mark.cuda
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerLabeledOnly", "nnUNetTrainerMeanTeacher", "nnUNetTrainerPseudoLabel",
            "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
            "nnUNetTrainerARCO_SAG")


# ------------------------------------------------------------------------------------------------
# samplers on CUDA
# ------------------------------------------------------------------------------------------------
def _samplers():
    from nnunet_semicl.sampling.stratified import StratifiedSampler
    return [StratifiedSampler(antithetic=a, strata=s) for s in ("spatial", "index") for a in (False, True)]


@cuda_only
@pytest.mark.parametrize("shape", [(3, 37, 41), (2, 9, 10, 11), (5000,)])
def test_samplers_on_cuda_keep_the_contract(shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = torch.rand(shape, device="cuda", generator=g) < 0.4
    for s in _samplers():
        for n in (3, 256, 131072):
            a = s(mask, n, g)
            assert a.index.device.type == "cuda" and a.index.numel() == n
            assert bool(mask.reshape(-1)[a.index].all())
            assert abs(float(a.weight.double().sum()) - 1) < 1e-4


@cuda_only
def test_samplers_on_cuda_are_unbiased_and_reduce_variance():
    """Weighted inclusion of every candidate = 1/|P| (z-scores over 300 draws), and SG's variance of the
    mean of a smooth trend far below uniform sampling, as tests/unit/test_stratified.py on the CPU."""
    from nnunet_semicl.sampling.uniform import UniformSampler
    g = torch.Generator(device="cuda").manual_seed(1)
    mask = torch.rand(2, 16, 16, device="cuda", generator=g) < 0.6
    flat = mask.reshape(-1)
    cand = flat.nonzero(as_tuple=True)[0]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16, device="cuda"), torch.linspace(0, 1, 16, device="cuda"),
                            indexing="ij")
    h = torch.stack([yy + 2 * xx, 3 * yy - xx + 1]).double().reshape(-1)
    reps, n = 300, 20
    var = {}
    for s in _samplers() + [UniformSampler()]:
        incl = torch.zeros(reps, flat.numel(), dtype=torch.float64, device="cuda")
        est = torch.empty(reps, dtype=torch.float64, device="cuda")
        for r in range(reps):
            a = s(mask, n, g)
            incl[r].index_add_(0, a.index, a.weight.double())
            est[r] = (a.weight.double() * h[a.index]).sum()
        x = incl[:, cand]
        z = (x.mean(0) - 1.0 / cand.numel()) / (x.std(0) / math.sqrt(reps) + 1e-6)
        assert float(z.abs().max()) < 5 and float((z ** 2).mean()) < 2, getattr(s, "name", "uniform")
        var[getattr(s, "name", "uniform")] = float(est.var())
    assert var["sg"] < 0.3 * var["uniform"] and var["sag"] < var["uniform"]


# ------------------------------------------------------------------------------------------------
# AMP iterations of every trainer on the real-size configuration
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_acdc(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(root / k, exist_ok=True)
        os.environ[k] = str(root / k)
    import importlib

    import nnunetv2.paths
    importlib.reload(nnunetv2.paths)   # nnU-Net reads these variables at import
    import nnunetv2.run.run_training as rt
    importlib.reload(rt)
    from nnunet_semicl.benchmarking.gpu_check import build_synthetic_dataset, load_spec
    dry = os.environ.get("NNUNET_SEMICL_GPU_CHECK_DRY_RUN") == "1"
    return build_synthetic_dataset(load_spec("acdc_2d"), str(root / "nnUNet_preprocessed"), 993, n_cases=6, tiny=dry)


def _start(ds, name):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_semicl.benchmarking.step_trainers import choose_epoch
    os.environ["nnUNet_compile"] = "f"
    trainer = get_trainer_from_args(ds["dataset"], ds["configuration"], 0, name, ds["plans"], device=torch.device("cuda"))
    trainer.current_epoch = choose_epoch(trainer, None)   # fine-tuning phase of multi-phase trainers
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    return trainer


@pytest.fixture(scope="module")
def fixed_batches(synthetic_acdc):
    """One labeled and one unlabeled batch from nnU-Net's loaders, reused by every trainer (augmenting a
    batch of 56 real-size slices on one CPU thread takes seconds)."""
    trainer = _start(synthetic_acdc, "nnUNetTrainerMeanTeacher")
    return next(trainer.dataloader_train), next(trainer.dataloader_unlabeled)


def _clones(batch):
    while True:
        yield {k: (v.clone() if hasattr(v, "clone") else [t.clone() for t in v] if isinstance(v, list) else v)
               for k, v in batch.items()}


@cuda_only
@pytest.mark.parametrize("name", TRAINERS)
def test_amp_iterations(synthetic_acdc, fixed_batches, name):
    import numpy as np

    from nnunet_semicl.benchmarking.step_trainers import fill_state_buffers
    from nnunet_semicl.modules.queues import RingBuffer

    trainer = _start(synthetic_acdc, name)
    labeled, unlabeled = _clones(fixed_batches[0]), _clones(fixed_batches[1])
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        trainer.dataloader_unlabeled = unlabeled
    fill_state_buffers(trainer)
    before = [p.detach().clone() for p in trainer.network.parameters()][:4]
    losses = [float(np.asarray(trainer.train_step(next(labeled))["loss"])) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses), losses
    scaler = trainer.grad_scaler
    assert scaler is not None and scaler.is_enabled() and math.isfinite(scaler.get_scale())
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.network.parameters()))
    state = getattr(trainer, "state_modules", None)
    if name in ("nnUNetTrainerMONA", "nnUNetTrainerARCO", "nnUNetTrainerARCO_SAG"):
        banks = [m for m in state.modules() if isinstance(m, RingBuffer) and m.items.dim() == 2]
        assert banks and all(m.items.dtype == torch.float16 and m.items.is_cuda for m in banks)
