"""Same losses and gradients as the reference: seeded train steps of every exported trainer (issue 28).

Each trainer is built as ``nnUNetv2_train`` builds it (``2d_tiny`` of the synthetic phantoms), put into the
steady state of its fine-tuning (warm-up gate open, no ramp, every unsupervised term at full weight; queues,
memory banks and the NN pool filled with seeded random unit vectors), and runs ``STEPS`` seeded
``train_step`` calls on batches drawn once with seeded nnU-Net loaders. After each step it records every loss
term, the global gradient norm and the gradient norm of each top-level module (the network's encoder and
decoder, every head); after the last, the norm of each EMA twin and the sum of each state buffer. These numbers
are compared with ``step_reference.json``: a speed change must not move any of them.

Tolerances: the first step runs on the same weights, batch and random draws, so only float rounding may differ
(measured: below 1e-7 for a kernel changed by a speed-up) and ``RTOL`` is tight; a changed loss term or weight
shows there. Later steps run on weights that already differ by such rounding, and a rounding-level change can
flip a discrete choice (an entropy percentile, a hard-query threshold, a sampler's stratum), which moves a
gradient norm by up to a few 1e-4 (measured): ``RTOL_LATER``. They still catch a changed EMA, queue or bank update.

Confidence thresholds are lowered for the test (an untrained teacher is never 0.97-confident), so that the
unlabeled pixels take part in every term; banks and queues are shortened so the test stays fast.

Regenerate the reference (only when a change of a loss or gradient is intended, and say so in the commit)::

    NNUNET_SEMICL_UPDATE_STEP_REFERENCE=1 python -m pytest -q tests/integration/test_step_equality.py
"""
import json
import os
import random

import numpy as np
import pytest
import torch

from tests.conftest import TRAIN_ENV
from tests.integration.nnunet_helpers import env, make_trainer

pytestmark = pytest.mark.integration

REFERENCE = os.path.join(os.path.dirname(__file__), "step_reference.json")
UPDATE = os.environ.get("NNUNET_SEMICL_UPDATE_STEP_REFERENCE") == "1"
RTOL = 1e-4
RTOL_LATER = 2e-3
ATOL = 1e-7
STEPS = 3
TRAINERS = ("nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", "nnUNetTrainerMeanTeacher", "nnUNetTrainerACTION",
            "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO", "nnUNetTrainerARCO_SAG")
#: test-only settings (not defaults): low thresholds so an untrained teacher's pixels take part; short banks
SETTINGS = {"confidence_threshold": 0.3, "anco_weak_threshold": 0.3, "equivariance_threshold": 0.3,
            "bank_size": 600, "bank_background_size": 1000, "saacl_queue_size": 1024, "rampup_fraction": 0.0}


def _seed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _norm(params) -> float:
    grads = [p.grad.detach().double().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _fingerprint_step(t, out: dict, clip_norms: list) -> dict:
    rec = {k: float(np.asarray(v)) for k, v in out.items()}
    rec["grad_norm_before_clip"] = float(clip_norms.pop())   # the gradients below are clipped to grad_clip_norm
    params = list(t.network.parameters()) + list(getattr(t, "heads", torch.nn.ModuleDict()).parameters())
    rec["grad_norm"] = _norm(params)
    for name, mod in t.network.named_children():
        rec[f"grad_norm.network.{name}"] = _norm(mod.parameters())
    for name, mod in getattr(t, "heads", {}).items():
        rec[f"grad_norm.heads.{name}"] = _norm(mod.parameters())
    return rec


def _distance(params, others=None) -> float:
    """Norm of all ``params`` together (of ``params - others`` when given)."""
    params = list(params)
    others = [torch.zeros_like(p) for p in params] if others is None else list(others)
    norms = [(p.detach().double() - o.detach().double()).norm() for p, o in zip(params, others)]
    return float(torch.stack(norms).norm())


def _twins(t) -> dict:
    """Every EMA twin's parameters (the teacher and the heads' twins), copied."""
    if getattr(t, "teacher", None) is None:
        return {}
    twins = {"teacher": t.teacher.model, **{f"head_teacher.{n}": tw.model for n, tw in t.head_teachers.items()}}
    return {n: [p.detach().clone() for p in m.parameters()] for n, m in twins.items()}


def _fingerprint_state(t, twins_before: dict) -> dict:
    rec = {}
    for name, after in _twins(t).items():
        rec[f"{name}_norm"] = _distance(after)
        # how far each EMA twin moved over the steps: proportional to 1 - momentum, 0 for a skipped update
        rec[f"{name}_moved"] = _distance(after, twins_before[name])
    if getattr(t, "teacher", None) is not None:
        for name, buf in t.state_modules.named_buffers():
            if buf.is_floating_point() or buf.dtype in (torch.int64, torch.int32, torch.bool):
                rec[f"state_sum.{name}"] = float(buf.double().sum())
    return rec


def run_trainer(phantom, name: str, clip_norms: list) -> dict:
    from nnunet_semicl.benchmarking.step_trainers import fill_state_buffers

    with env(**TRAIN_ENV):
        _seed(0)
        t = make_trainer(phantom.id, "2d_tiny", 3, name, phantom.phases_plans)
        t.disable_checkpointing = True
        for k, v in SETTINGS.items():
            if hasattr(t, k):
                setattr(t, k, v)
        _seed(0)
        t.on_train_start()
        try:
            if hasattr(t, "unsup_gate_step"):
                t.current_epoch, t.global_step = 3, 6   # fine-tuning of every phased method
                t.unsup_gate_step = 0                   # warm-up over: every unsupervised term on
            t.on_epoch_start()
            t.on_train_epoch_start()
            _seed(1)
            labeled = [next(t.dataloader_train) for _ in range(STEPS)]
            if getattr(t, "dataloader_unlabeled", None) is not None:
                unlabeled = [next(t.dataloader_unlabeled) for _ in range(STEPS)]
                t.dataloader_unlabeled._finish() if hasattr(t.dataloader_unlabeled, "_finish") else None
                t.dataloader_unlabeled = iter(unlabeled)
            fill_state_buffers(t)
            _seed(2)
            twins_before = _twins(t)
            steps = [_fingerprint_step(t, t.train_step(b), clip_norms) for b in labeled]
            return {"steps": steps, "state": _fingerprint_state(t, twins_before)}
        finally:
            for dl in (t.dataloader_train, t.dataloader_val):
                getattr(dl, "_finish", lambda: None)()


def _compare(got: dict, want: dict, where: str, rtol: float):
    assert set(got) == set(want), f"{where}: recorded quantities differ: {sorted(set(got) ^ set(want))}"
    bad = {k: (got[k], want[k]) for k in want
           if not np.isclose(got[k], want[k], rtol=rtol, atol=ATOL, equal_nan=True)}
    assert not bad, f"{where}: changed (got, reference): {bad}"


def test_losses_and_gradients_equal_reference(phantom, monkeypatch):
    clip_norms = []   # the total gradient norm each step clipped (what clip_grad_norm_ returns)
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (clip_norms.append(clip(*a, **k)),
                                                                           clip_norms[-1])[1])
    got = {name: run_trainer(phantom, name, clip_norms) for name in TRAINERS}
    if UPDATE:
        with open(REFERENCE, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
        pytest.skip(f"reference written to {REFERENCE}")
    with open(REFERENCE) as f:
        want = json.load(f)
    assert set(want) == set(TRAINERS)
    for name in TRAINERS:
        # every term the trainer computes in fine-tuning (NaN: a term of another phase) is on, so the comparison
        # covers it
        last = want[name]["steps"][-1]
        assert all(v != 0 for k, v in last.items() if k.startswith("train_loss_")), (name, last)
        for i, (g, w) in enumerate(zip(got[name]["steps"], want[name]["steps"])):
            _compare(g, w, f"{name} step {i}", RTOL if i == 0 else RTOL_LATER)
        _compare(got[name]["state"], want[name]["state"], f"{name} state", RTOL_LATER)
