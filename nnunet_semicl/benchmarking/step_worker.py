"""The measuring subprocess of ``nnunet_semicl benchmark step`` (imports torch and nnU-Net): draws the fixed
batch once, or times ``train_step`` of one trainer on it, and writes the result as JSON.

The driver starts it as ``python -c "from nnunet_semicl.benchmarking.step_worker import worker_main; ..."``.
"""
import os
import random
import sys
import time
from typing import Dict, List, Optional

from nnunet_semicl.benchmarking.common import MB, median
from nnunet_semicl.benchmarking.step_trainers import build_trainer, choose_epoch, fill_state_buffers, parse_entry
from nnunet_semicl.files import load_json, save_json


def _proc_status_mb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _module_bytes(mod) -> int:
    if mod is None:
        return 0
    return sum(p.numel() * p.element_size() for p in mod.parameters()) + \
        sum(b.numel() * b.element_size() for b in mod.buffers())


def _seed(s: int = 0) -> None:
    import numpy as np
    import torch
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _shape(x):
    return list(x.shape) if hasattr(x, "shape") else [list(t.shape) for t in x]


def worker_draw(spec: dict) -> dict:
    """Draw one labeled and one unlabeled batch with nnU-Net's loaders (fixed seeds) and save them."""
    import torch
    torch.set_num_threads(int(spec["threads"]))
    _seed(0)
    trainer = build_trainer(spec, spec["entry"])
    trainer.on_train_start()
    _seed(1)
    labeled = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)
    # plain types only (the keys are a numpy array of str): the measuring process loads it with weights_only=True
    keep = lambda b, keys: {k: ([str(c) for c in b[k]] if k == "keys" else b[k]) for k in keys if k in b}
    torch.save({"labeled": keep(labeled, ("data", "target", "keys")), "unlabeled": keep(unlabeled, ("data", "keys"))},
               spec["batch_file"])
    info = {"labeled_shape": list(labeled["data"].shape), "unlabeled_shape": list(unlabeled["data"].shape),
            "target_shapes": _shape(labeled["target"]),
            "patch_size": list(trainer.configuration_manager.patch_size),
            "batch_size": int(trainer.batch_size),
            "network_params_m": round(sum(p.numel() for p in trainer.network.parameters()) / 1e6, 2),
            "labeled_cases": len(trainer.case_sets.labeled), "unlabeled_cases": len(trainer.case_sets.unlabeled)}
    return info


#: trainer methods timed per step (forward work only; each counted where it is called from)
TIMED_METHODS = ("teacher_forward", "prepare_step", "compute_losses", "after_optimizer_step", "supervised_loss",
                 "pseudo_label_loss", "consistency_loss", "global_distillation", "local_distillation", "representation",
                 "anatomical_contrast", "saacl", "teacher_representation", "tailness", "consistency", "diversity")


class SectionTimer:
    """Accumulates the wall time of wrapped trainer methods and of the student network's forward per step."""

    def __init__(self, sync: bool = False):
        self.sync = sync
        self.acc: Dict[str, float] = {}
        self._t0 = None

    def _now(self):
        if self.sync:
            import torch
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, obj, name: str) -> bool:
        fn = getattr(obj, name, None)
        if fn is None or not callable(fn):
            return False

        def wrapped(*a, **k):
            t = self._now()
            try:
                return fn(*a, **k)
            finally:
                self.acc[name] = self.acc.get(name, 0.0) + self._now() - t

        setattr(obj, name, wrapped)
        return True

    def hook_module(self, module, name: str) -> None:
        start = {}

        def pre(mod, inp):
            start["t"] = self._now()

        def post(mod, inp, out):
            self.acc[name] = self.acc.get(name, 0.0) + self._now() - start["t"]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def pop(self) -> Dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def breakdown_of(sections: List[Dict[str, float]], step_times: List[float]) -> Dict[str, float]:
    """Median seconds per step of each section, plus the derived 'backward + optimizer' and 'other prepare'."""
    keys = sorted({k for s in sections for k in s})
    out = {k: median(s.get(k, 0.0) for s in sections) for k in keys}
    rest = [t - s.get("prepare_step", s.get("student_forward", 0.0)) - s.get("compute_losses", 0.0)
            - s.get("after_optimizer_step", 0.0) for s, t in zip(sections, step_times)]
    if "compute_losses" in keys:
        out["backward_and_step"] = median(rest)
    if "prepare_step" in keys:
        out["aug_and_other_prepare"] = median(s.get("prepare_step", 0.0) - s.get("teacher_forward", 0.0)
                                              - s.get("student_forward", 0.0) for s in sections)
    return out


def _clone(batch: dict) -> dict:
    out = {}
    for k, v in batch.items():
        if hasattr(v, "clone"):
            out[k] = v.clone()
        elif isinstance(v, (list, tuple)) and v and hasattr(v[0], "clone"):
            out[k] = [t.clone() for t in v]
        else:
            out[k] = v
    return out


def worker_measure(spec: dict) -> dict:
    import gc

    import numpy as np
    import torch

    name, phase = parse_entry(spec["entry"])
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    cuda = spec["device"] == "cuda"
    if cuda:
        from torch.backends import cudnn
        cudnn.deterministic, cudnn.benchmark = False, True
    _seed(0)
    trainer = build_trainer(spec, name)
    epoch = choose_epoch(trainer, phase)
    trainer.current_epoch = epoch
    trainer.on_train_start()
    if hasattr(trainer, "unsup_gate_step"):
        # the steady state of a run: supervised warm-up over, every unsupervised term at full weight
        trainer.unsup_gate_step = 0
        trainer.rampup_fraction = 0.0
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    actual_phase = trainer.phase() if hasattr(trainer, "phase") else None
    if phase and actual_phase != phase:
        raise SystemExit(f"{name}: epoch {epoch} is in phase {actual_phase}, not {phase}")
    sees_labeled = bool(trainer.teacher_sees_labeled()) if hasattr(trainer, "teacher_sees_labeled") else False
    unl_loader = getattr(trainer, "dataloader_unlabeled", None)

    # nnU-Net's data loading in this process (not part of the step time)
    data_t = []
    for i in range(4):  # the first draw (files opened, caches warm) is not counted
        t = time.perf_counter()
        next(trainer.dataloader_train)
        if unl_loader is not None:
            next(unl_loader)
        if i:
            data_t.append(time.perf_counter() - t)

    fixed = torch.load(spec["batch_file"], weights_only=True)   # tensors, lists of tensors, case ids
    n = int(spec["warmup"]) + int(spec["steps"])
    lab = [_clone(fixed["labeled"]) for _ in range(n)]
    unl = [_clone(fixed["unlabeled"]) for _ in range(n)]
    if unl_loader is not None:
        trainer.dataloader_unlabeled = iter(unl)
    state_bytes = fill_state_buffers(trainer)
    timer = None
    if not cuda:  # per-part timing needs synchronisation on CUDA, which would perturb the step time
        timer = SectionTimer(sync=cuda)
        for m in TIMED_METHODS:
            timer.wrap(trainer, m)
        timer.hook_module(trainer.network, "student_forward")
        if not hasattr(trainer, "compute_losses"):  # the stock trainer: its loss module is the loss computation
            timer.hook_module(trainer.loss, "compute_losses")
    del fixed
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cuda_before = torch.cuda.memory_allocated() / MB if cuda else None
    rss_before = _proc_status_mb("VmRSS")
    hwm_reset = _reset_peak_rss()
    times, cpu_times, out, sections = [], [], {}, []
    for i in range(n):
        if cuda:
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = trainer.train_step(lab[i])
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        if timer is not None:
            sections.append(timer.pop())
    peak_rss = _proc_status_mb("VmHWM")
    timed = times[int(spec["warmup"]):]
    terms = {}
    for k, v in out.items():
        try:
            terms[k] = float(np.asarray(v))
        except (TypeError, ValueError):
            pass
    return {
        "label": spec["entry"], "trainer": name, "phase": actual_phase, "epoch": epoch,
        "global_step": getattr(trainer, "global_step", None), "teacher_sees_labeled": sees_labeled,
        "times": timed, "warmup_times": times[: int(spec["warmup"])], "median_s": float(np.median(timed)),
        # CPU seconds of this process per step (all threads): ~ threads x s/it on a quiet machine
        "cpu_s": float(np.median(cpu_times[int(spec["warmup"]):])),
        "data_s": float(np.median(data_t)), "rss_before_mb": rss_before, "peak_rss_mb": peak_rss,
        "rss_increase_mb": (peak_rss - rss_before) if (peak_rss and rss_before) else None,
        "hwm_reset": hwm_reset,
        "cuda_before_mb": cuda_before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / MB if cuda else None,
        "cuda_increase_mb": (torch.cuda.max_memory_allocated() / MB - cuda_before) if cuda else None,
        "state_mb": state_bytes / MB,
        "heads_mb": (_module_bytes(getattr(trainer, "heads", None))
                     + _module_bytes(getattr(trainer, "head_teachers", None))) / MB,
        "teacher_mb": _module_bytes(getattr(getattr(trainer, "teacher", None), "model", None)) / MB,
        "loss_terms": terms, "threads": torch.get_num_threads(), "device": spec["device"],
        "breakdown": breakdown_of(sections[int(spec["warmup"]):], timed) if sections else None,
    }


def worker_main(spec_path: str) -> None:
    spec = load_json(spec_path)
    res = worker_draw(spec) if spec["mode"] == "draw" else worker_measure(spec)
    save_json(res, spec["out"])
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (loader threads, CUDA context): the result is written
