"""The prepared GPU check (issue 13): everything that needs CUDA, in one command of at most 8 minutes.

Run on the lent GPU machine through ``benchmarks/gpu/run_check.sh OUT`` (which installs the wheel
kit first; see benchmarks/gpu/README.md), or on a CPU with ``--dry-run`` (a tiny version of every
stage, seconds to a minute; the CI test runs it). Stages, in this order, each written to
``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` as soon as it ends (a run cut short still returns its
first parts); each stage gets what is left of ``--budget`` seconds, in fixed shares:

1. ``env``: the card, torch / CUDA / nnU-Net versions, whether SimpleITK is the kit's stub.
2. ``cuda_tests``: ``pytest -m cuda tests/gpu`` (AMP iterations of every trainer on a real-size
   configuration with finite losses and GradScaler steps, fp16 state buffers, the samplers on CUDA
   against their CPU statistics); junit XML summarised.
3. ``step``: ``nnunet_semicl benchmark step`` (nnunet_semicl/benchmarking/step*.py) on the plans
   stock planning gave ACDC ``2d`` and LA ``3d_fullres`` (shipped in benchmarks/gpu/plans/*.json:
   patch, batch, network; no image data), with synthetic phantom-like cases written straight into
   nnU-Net's preprocessed format; every trainer, interleaved repetitions, medians, ratios.
4. ``compile``: the same measurement with ``torch.compile`` (nnU-Net's ``nnUNet_compile=t``) for the
   stock trainer and each of ours forced to ``allow_compile=True`` (benchmark-only subclasses
   ``NAME+compile``): whether it runs and the speed-up over eager.
5. ``accuracy``: nnUNetTrainerLabeledOnly and nnUNetTrainerACTIONpp trained in-process with AMP on the
   synthetic cases at the real ACDC 2d configuration until the stage's time is used up; nnU-Net's
   own ``validation_step`` pseudo-Dice on held-out synthetic cases at the start and the end.
"""
import argparse
import os
import subprocess
import sys
import time
import traceback
from typing import Dict, List

from nnunet_semicl.argtypes import positive_float
from nnunet_semicl.benchmarking.common import fmt, markdown_table
from nnunet_semicl.benchmarking.step_trainers import COMPILED
from nnunet_semicl.files import load_json, save_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLANS_DIR = os.path.join(REPO, "benchmarks", "gpu", "plans")
SPECS = {"acdc_2d": 991, "la_3d_fullres": 992}   # shipped spec -> synthetic dataset id
#: fractions of the budget each stage may use (of what is left when it starts)
SHARES = {"cuda_tests": 0.2, "step": 0.55, "compile": 0.5, "accuracy": 1.0}
STEP_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerLabeledOnly", "nnUNetTrainerMeanTeacher", "nnUNetTrainerPseudoLabel",
                 "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
                 "nnUNetTrainerARCO_SAG")
COMPILE_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerACTIONpp", "nnUNetTrainerARCO")
ACCURACY_TRAINERS = ("nnUNetTrainerLabeledOnly", "nnUNetTrainerACTIONpp")
SETTING = "bench"


# ------------------------------------------------------------------------------------------------
# the shipped plans (made here from the real data; no image data)
# ------------------------------------------------------------------------------------------------
def export_plans_spec(preprocessed_base: str, configuration: str, out: str) -> dict:
    """Write the spec of one configuration of a planned dataset: its plans (that configuration only),
    the label names and channel names of dataset.json; nothing derived from the images except what
    planning put into the plans (spacing, intensity statistics, median shape)."""
    plans = load_json(os.path.join(preprocessed_base, "nnUNetPlans.json"))
    ds = load_json(os.path.join(preprocessed_base, "dataset.json"))
    plans["configurations"] = {configuration: plans["configurations"][configuration]}
    spec = {"source": os.path.basename(os.path.normpath(preprocessed_base)), "configuration": configuration,
            "plans": plans,
            "dataset_json": {k: ds[k] for k in ("channel_names", "labels", "file_ending") if k in ds}}
    save_json(spec, out)
    return spec


def load_spec(name: str) -> dict:
    return load_json(os.path.join(PLANS_DIR, name + ".json"))


# ------------------------------------------------------------------------------------------------
# synthetic data in nnU-Net's preprocessed format
# ------------------------------------------------------------------------------------------------
def _phantom(shape, n_classes: int, rng):
    """An image [1, *shape] and a label map [1, *shape]: nested ellipsoids (one per foreground class,
    intensity rising with the class) plus noise and a smooth bias field."""
    import numpy as np
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    seg = np.zeros(shape, dtype=np.int16)
    centre = rng.uniform(-0.2, 0.2, len(shape))
    for c in range(1, n_classes):
        radius = 0.75 * (1 - (c - 1) / max(n_classes, 2)) * rng.uniform(0.8, 1.1, len(shape))
        if len(shape) == 3 and shape[0] < 16:      # thick-slice 2D data: every slice cuts the shapes
            radius[0] = 10.0
        r2 = sum(((g - m) / r) ** 2 for g, m, r in zip(grids, centre, radius))
        seg[r2 <= 1] = c
    img = seg.astype(np.float32) * 100.0 + 20.0 * grids[-1] + rng.normal(0, 25.0, shape)
    return img[None].astype(np.float32), seg[None]


def build_synthetic_dataset(spec: dict, preprocessed: str, dataset_id: int, n_cases: int = 8,
                            tiny: bool = False, seed: int = 0) -> dict:
    """Write ``Dataset<id>_Synthetic`` into ``preprocessed``: the spec's plans and dataset.json, ``n_cases``
    phantom cases through nnU-Net's own DefaultPreprocessor (normalisation, class locations) and
    blosc2 writer, 5-fold splits and the semi-supervised setting ``bench`` (2 labeled cases in fold
    0). ``tiny``: add and use ``<configuration>_tiny`` (small patch and network) for dry runs.
    Returns ``{"dataset": name, "configuration": ..., "plans": "nnUNetPlans_bench"}``."""
    import copy

    import numpy as np
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_semicl.data.plans_tools import make_tiny_configuration
    from nnunet_semicl.data.setting_files import write_setting
    from nnunet_semicl.data.splits import default_folds, make_setting

    name = f"Dataset{dataset_id:03d}_Synthetic"
    base = os.path.join(preprocessed, name)
    os.makedirs(base, exist_ok=True)
    plans = copy.deepcopy(spec["plans"])
    plans["dataset_name"] = name
    config = spec["configuration"]
    cfg = plans["configurations"][config]
    if tiny:
        plans["configurations"][config + "_tiny"] = make_tiny_configuration(plans, config, batch_size=2)
        config += "_tiny"
    ds = dict(spec["dataset_json"], numTraining=n_cases, file_ending=spec["dataset_json"].get("file_ending", ".nii.gz"))
    save_json(plans, os.path.join(base, "nnUNetPlans.json"))
    save_json(ds, os.path.join(base, "dataset.json"))
    pm = PlansManager(plans)
    cm = pm.get_configuration(config)
    patch = list(cm.patch_size)
    # case shape: the configuration's patch plus a margin (2D configurations: a few thick slices)
    spacing = list(plans.get("original_median_spacing_after_transp", [1.0] * 3))
    if len(patch) == 2:
        shape = [6] + [int(p * 1.25) for p in patch]
        spacing = [spacing[0]] + list(cfg["spacing"])
    else:
        shape = [int(p * 1.25) for p in patch]
        spacing = list(cfg["spacing"])
    n_classes = len(ds["labels"])
    rng = np.random.RandomState(seed)
    pre = DefaultPreprocessor(verbose=False)
    out_dir = os.path.join(base, cm.data_identifier)
    os.makedirs(out_dir, exist_ok=True)
    fingerprint = {"spacings": [], "shapes_after_crop": []}
    ids = [f"synthetic{i:03d}" for i in range(n_cases)]
    for case in ids:
        img, seg = _phantom(shape, n_classes, rng)
        data, seg_p, props = pre.run_case_npy(img, seg, {"spacing": spacing}, pm, cm, ds)
        nnUNetDatasetBlosc2.save_case(data, seg_p, props, os.path.join(out_dir, case))
        fingerprint["spacings"].append(spacing)
        fingerprint["shapes_after_crop"].append(list(img.shape[1:]))
    save_json(fingerprint, os.path.join(base, "dataset_fingerprint.json"))
    folds = default_folds(ids)
    save_json(folds, os.path.join(base, "splits_final.json"))
    setting = make_setting(folds, SETTING, n_labeled=2, created_by="gpu_check (synthetic)")
    write_setting(base, setting, overwrite=True)
    return {"dataset": name, "dataset_id": dataset_id, "configuration": config, "plans": f"nnUNetPlans_{SETTING}",
            "patch_size": patch, "batch_size": int(cm.batch_size), "case_shape": shape,
            "network_stages": cm.network_arch_init_kwargs.get("n_stages")}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
class Report:
    """JSON + markdown in the output folder, rewritten after every stage."""

    def __init__(self, out: str, options: dict):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.data = {"options": options, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}}
        self.write()

    def add(self, stage: str, result: dict) -> None:
        self.data["stages"][stage] = result
        self.write()

    def write(self) -> None:
        save_json(self.data, os.path.join(self.out, "gpu_check.json"))
        with open(os.path.join(self.out, "gpu_check.md"), "w") as f:
            f.write(format_markdown(self.data) + "\n")


def format_markdown(data: dict) -> str:
    o = data["options"]
    lines = [f"# GPU check, {data['started']}" + (" (**dry run on CPU: not a measurement**)" if o.get("dry_run") else ""),
             ""]
    st = data["stages"]
    env = st.get("env", {})
    if env:
        lines += [f"- Device: {env.get('device_name', '?')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
                  f"nnU-Net {env.get('nnunetv2')}, Python {env.get('python')}; SimpleITK: "
                  f"{'kit stub' if env.get('simpleitk_stub') else env.get('simpleitk')}.", ""]
    for name, res in st.items():
        if name == "env":
            continue
        head = f"## {name}: {res.get('status')} ({fmt(res.get('seconds'), 0)} s)"
        lines += [head, ""]
        if res.get("error"):
            lines += ["```", res["error"][-1500:], "```", ""]
        if name == "cuda_tests" and "tests" in res:
            rows = [[t["name"], t["outcome"], t.get("message", "")[:120]] for t in res["tests"]]
            lines += [markdown_table(["test", "outcome", "message"], rows, "lll"), ""]
        if name in ("step", "compile"):
            for key, part in res.get("parts", {}).items():
                lines += [f"### {key}", "", part.get("markdown") or f"({part.get('status')})", ""]
        if name == "accuracy":
            rows = [[r["trainer"], str(r.get("iterations")), fmt(r.get("dice_start"), 3), fmt(r.get("dice_end"), 3),
                     fmt(r.get("loss_first"), 3), fmt(r.get("loss_last"), 3), str(r.get("finite")),
                     fmt(r.get("s_per_it"), 3)] for r in res.get("runs", [])]
            if rows:
                lines += [markdown_table(["trainer", "iterations", "pseudo-Dice start", "pseudo-Dice end",
                                          "loss first", "loss last", "all finite", "s/it"], rows, "lrrrrrlr"), ""]
    return "\n".join(lines)


def _run_stage(report: Report, name: str, fn, *args) -> dict:
    t0 = time.time()
    print(f"\n===== stage {name}", flush=True)
    try:
        res = fn(*args) or {}
        res.setdefault("status", "ok")
    except Exception as e:  # report it and go on with the next stage
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}
    res["seconds"] = round(time.time() - t0, 1)
    report.add(name, res)
    print(f"===== stage {name}: {res['status']} ({res['seconds']} s)", flush=True)
    return res


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
def stage_env(device: str) -> dict:
    import platform

    import torch
    import nnunetv2  # noqa: F401  (the kit must import)
    from importlib.metadata import version
    try:
        import SimpleITK
        stub = bool(getattr(SimpleITK, "NNUNET_SEMICL_STUB", False))
        sitk = getattr(SimpleITK, "__version__", "?")
    except ImportError:
        stub, sitk = False, "absent"
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": cuda, "device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1) if cuda else None,
            "nnunetv2": version("nnunetv2"), "simpleitk_stub": stub, "simpleitk": sitk,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _junit(path: str) -> List[dict]:
    import xml.etree.ElementTree as ET
    out = []
    if not os.path.isfile(path):
        return out
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome, msg = ("failed" if tag != "skipped" else "skipped"), (el.get("message") or "")
        out.append({"name": f"{tc.get('classname', '').split('.')[-1]}::{tc.get('name')}", "outcome": outcome,
                    "message": msg, "time": float(tc.get("time") or 0)})
    return out


def stage_cuda_tests(out: str, timeout: float, dry_run: bool) -> dict:
    xml = os.path.join(out, "cuda_tests.xml")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", os.path.join(REPO, "tests", "gpu"), "-q",
           "-p", "no:cacheprovider", f"--junitxml={xml}", "-o", "junit_family=xunit1"]
    # loaders in the test process itself (the tests draw one fixed batch: no augmentation workers to leave behind)
    env = dict(os.environ, NNUNET_SEMICL_GPU_CHECK_DRY_RUN="1" if dry_run else "0", nnUNet_n_proc_DA="0")
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=max(timeout, 10))
        rc, tail = proc.returncode, proc.stdout[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", (e.stdout or b"")[-3000:] if isinstance(e.stdout, bytes) else str(e.stdout)[-3000:]
    tests = _junit(xml)
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    status = "ok" if rc in (0, 5) and counts["failed"] == 0 else "failed"   # 5: nothing collected
    return {"status": status, "returncode": rc, "counts": counts, "tests": tests, "output_tail": tail}


def _step_part(key: str, ds: dict, work: str, trainers, reps: int, steps: int, warmup: int, device: str,
               timeout: float) -> dict:
    """One ``nnunet_semicl benchmark step`` run in a subprocess; on a timeout, the measurements so far."""
    from nnunet_semicl.benchmarking import step_report
    cmd = [sys.executable, "-m", "nnunet_semicl.cli", "benchmark", "step", "--workdir", work, "--dataset",
           str(ds["dataset_id"]), "--plans", ds["plans"], "-c", ds["configuration"], "--device", device,
           "--reps", str(reps), "--steps", str(steps), "--warmup", str(warmup),
           "--timeout", str(int(max(timeout, 30))), "--trainers", *trainers]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=max(timeout, 30))
        rc, tail = proc.returncode, proc.stdout[-2500:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout)[-2500:]
    res = {"status": "ok" if rc == 0 else ("partial" if rc == "timeout" else "failed"), "returncode": rc,
           "seconds": round(time.time() - t0, 1), "command": " ".join(cmd[2:]), "dataset": ds}
    full = os.path.join(work, "step_cost.json")
    partial = os.path.join(work, "step_cost.partial.json")
    if rc == 0 and os.path.isfile(full):
        rep = load_json(full)
        res.update(summary=rep["summary"], failures=rep.get("failures"), batch=rep.get("batch"),
                   markdown=step_report.format_step_markdown(rep))
    elif os.path.isfile(partial):
        part = load_json(partial)
        if part.get("results"):
            res["summary"] = step_report.summarize(part["results"], device)
            res["failures"] = part.get("failures")
            res["markdown"] = markdown_table(
                ["trainer", "s/it", "peak MB", "× stock", "× MT"],
                [[r["label"], fmt(r["step_s"]), fmt(r["peak_mb"], 0), fmt(r["x_stock"], 2), fmt(r["x_mean_teacher"], 2)]
                 for r in res["summary"]["rows"]], "lrrrr") + "\n\n(partial: the run was cut at its time limit)"
    if "markdown" not in res:
        res["output_tail"] = tail
    return res


def stage_step(datasets: Dict[str, dict], out_work: str, budget: float, device: str, dry_run: bool) -> dict:
    parts = {}
    t_end = time.time() + budget
    keys = list(datasets)
    for i, key in enumerate(keys):
        left = t_end - time.time()
        share = left / (len(keys) - i)
        if dry_run:
            trainers, reps, steps, warmup = ("nnUNetTrainer", "nnUNetTrainerACTIONpp"), 1, 1, 1
        else:
            trainers = STEP_TRAINERS
            reps, steps, warmup = (2, 8, 3) if "2d" in key else (1, 6, 3)
        parts[key] = _step_part(key, datasets[key], os.path.join(out_work, "step_" + key), trainers, reps, steps,
                                warmup, device, share)
    status = "ok" if all(p["status"] == "ok" for p in parts.values()) else "partial"
    return {"status": status, "parts": parts}


def stage_compile(datasets: Dict[str, dict], out_work: str, budget: float, device: str, dry_run: bool) -> dict:
    if device != "cuda":
        return {"status": "skipped", "reason": "torch.compile is measured on CUDA only (nnU-Net compiles on CUDA only)"}
    key = "acdc_2d" if "acdc_2d" in datasets else next(iter(datasets))
    entries = [e for t in COMPILE_TRAINERS for e in (t, t + COMPILED)]
    part = _step_part(key, datasets[key], os.path.join(out_work, "compile_" + key), entries, 1, 8, 5, device,
                      budget)
    speedups = {}
    for r in (part.get("summary") or {}).get("rows", []):
        if r["label"].endswith(COMPILED):
            eager = next((x for x in part["summary"]["rows"] if x["label"] == r["label"][: -len(COMPILED)]), None)
            if eager:
                speedups[eager["label"]] = eager["step_s"] / r["step_s"]
    part["speedup_eager_over_compiled"] = speedups
    return {"status": part["status"], "parts": {key: part}, "speedups": speedups}


def stage_accuracy(ds: dict, budget: float, device: str, dry_run: bool) -> dict:
    """In-process AMP training of the accuracy trainers on the synthetic cases; pseudo-Dice on fold 0's
    validation cases (nnU-Net's validation_step: foreground Dice of the patch predictions)."""
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    runs = []
    per = budget / len(ACCURACY_TRAINERS)
    for name in ACCURACY_TRAINERS:
        t_end = time.time() + per
        torch.manual_seed(0)
        trainer = get_trainer_from_args(ds["dataset"], ds["configuration"], 0, name, ds["plans"],
                                        device=torch.device(device))
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()

        def pseudo_dice(n_batches: int = 2 if dry_run else 6) -> float:
            trainer.on_validation_epoch_start()
            outs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(n_batches)]
            tp = np.sum([o["tp_hard"] for o in outs], 0)
            fp = np.sum([o["fp_hard"] for o in outs], 0)
            fn = np.sum([o["fn_hard"] for o in outs], 0)
            trainer.network.train()
            return float(np.nanmean(2 * tp / np.maximum(2 * tp + fp + fn, 1)))

        dice_start = pseudo_dice()
        losses, it, t0 = [], 0, time.time()
        max_it = 3 if dry_run else 10 ** 6
        while it < max_it and time.time() < t_end - 15:
            out = trainer.train_step(next(trainer.dataloader_train))
            losses.append(float(np.asarray(out["loss"])))
            it += 1
        s_per_it = (time.time() - t0) / max(it, 1)
        dice_end = pseudo_dice()
        scaler = getattr(trainer, "grad_scaler", None)
        runs.append({"trainer": name, "iterations": it, "dice_start": dice_start, "dice_end": dice_end,
                     "loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-10:])) if losses else None,
                     "finite": bool(np.all(np.isfinite(losses))), "s_per_it": s_per_it,
                     "grad_scaler_scale": float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None,
                     "losses": losses[:: max(1, len(losses) // 200)]})
        for attr in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
            loader = getattr(trainer, attr, None)
            if hasattr(loader, "_finish"):   # stop the augmentation workers, as nnU-Net's on_train_end does
                loader._finish()
        del trainer
        if device == "cuda":
            torch.cuda.empty_cache()
    ok = all(r["finite"] for r in runs)
    return {"status": "ok" if ok else "failed", "dataset": ds, "runs": runs}


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def run(args) -> dict:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t_start = time.time()
    dry = bool(args.dry_run)
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.workdir or os.path.join("/tmp", "nnunet_semicl_gpu_check"))
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = os.path.join(work, k)
        os.makedirs(os.environ[k], exist_ok=True)
    import torch
    device = "cuda" if (torch.cuda.is_available() and not dry) else "cpu"
    # the accuracy stage trains with nnU-Net's loaders: augmentation workers on the GPU machine's cores
    # (the step benchmark sets 0 for its own workers: it trains on a fixed batch)
    os.environ.setdefault("nnUNet_n_proc_DA", "0" if dry else str(max(1, min(12, (os.cpu_count() or 2) - 2))))
    if not dry and device != "cuda":
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    # the dry run's stages are tiny; its budget only guards against a stage that hangs on a loaded CI machine
    budget = float(args.budget if args.budget is not None else (900.0 if dry else 450.0))
    report = Report(out, {"dry_run": dry, "budget_s": budget, "device": device, "stages": args.stages,
                          "command": " ".join(sys.argv)})

    def left() -> float:
        return budget - (time.time() - t_start)

    _run_stage(report, "env", stage_env, device)
    if "cuda_tests" in args.stages:
        _run_stage(report, "cuda_tests", stage_cuda_tests, out, SHARES["cuda_tests"] * left(), dry)
    datasets: Dict[str, dict] = {}
    if {"step", "compile", "accuracy"} & set(args.stages):
        def build():
            for name, ds_id in SPECS.items():
                if dry and name != "acdc_2d":
                    continue
                datasets[name] = build_synthetic_dataset(load_spec(name), os.environ["nnUNet_preprocessed"], ds_id,
                                                         n_cases=6 if dry else 8, tiny=dry)
            return {"datasets": datasets}
        _run_stage(report, "data", build)
    if "step" in args.stages and datasets:
        _run_stage(report, "step", stage_step, datasets, work, SHARES["step"] * left(), device, dry)
    if "compile" in args.stages and datasets:
        _run_stage(report, "compile", stage_compile, datasets, work, SHARES["compile"] * left(), device, dry)
    if "accuracy" in args.stages and "acdc_2d" in datasets:
        _run_stage(report, "accuracy", stage_accuracy, datasets["acdc_2d"], max(left() - 10, 20), device, dry)
    report.data["wall_s"] = round(time.time() - t_start, 1)
    report.write()
    print(f"\nReport: {os.path.join(out, 'gpu_check.md')} ({report.data['wall_s']} s)", flush=True)
    return report.data


STAGES = ("cuda_tests", "step", "compile", "accuracy")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnunet_semicl.benchmarking.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gpu_check.json, gpu_check.md, cuda_tests.xml)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configuration, 1 step: checks the pipeline")
    p.add_argument("--budget", type=positive_float, default=None,
                   help="seconds for all stages (default 450, so that the "
                        "command ends within 8 minutes with the kit install; "
                        "900 for --dry-run)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--workdir", default=None, help="scratch folder (default /tmp/nnunet_semicl_gpu_check)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
