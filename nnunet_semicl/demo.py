"""``nnunet_semicl demo``: a short end-to-end semi-supervised run on the built-in synthetic dataset.

Every step is a stock nnU-Net command (or one of ours), run exactly as a user would:

1. ``nnunet_semicl synthetic``: cardiac-like phantoms (20 training patients x ED/ES, 5 held out)
2. ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``
3. ``nnunet_semicl tiny-config`` (CPU) and ``nnunet_semicl split --fraction 0.1``: 10% labeled
4. ``nnUNetv2_train`` with nnUNetTrainerLabeledOnly and a semi-supervised trainer, short schedule
5. ``nnUNetv2_predict`` on the held-out images and ``nnUNetv2_evaluate_folder``
6. a per-class Dice table

It takes about 8 minutes on an idle 2-core CPU (docs/demo.md) and uses CUDA when it is available. Everything is
written under ``--workdir`` (default ``./nnunet_semicl_demo``), never to your own nnU-Net folders.
"""
import json
import os
import random
import shutil
import sys
import time

from nnunet_semicl.argtypes import non_negative_int, open_fraction, positive_int, seed_int
from nnunet_semicl.dataset_conversion.synthetic import DATASET, DATASET_ID
from nnunet_semicl.launch import module_main, nnunet_env, run_command, training_progress
from nnunet_semicl.seeding import SEED_ENV, parse_seed

LABELS = ("RV", "MLV", "LVC")
#: the demo's CPU network: half nnU-Net's 2d widths (16-32-64-128), not tiny-config's quarter (8-64). With
#: 8 features in the first stage, LabeledOnly's 800 iterations on 4 labeled images stayed in the "whole heart
#: is myocardium" minimum for some seeds (docs/demo.md); LabeledOnly trains about 4% longer.
TINY_WIDTH = ("--feature-divisor", "2", "--max-features", "128")


def add_arguments(p):
    p.add_argument("--workdir", default="nnunet_semicl_demo", help="folder for nnUNet_raw/preprocessed/results")
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainerLabeledOnly", "nnUNetTrainerACTIONpp"],
                   help="trainers to compare (default: labeled-only vs ACTION++)")
    p.add_argument("--fraction", type=open_fraction, default=0.1, help="labeled fraction of the training patients")
    p.add_argument("--patients", type=positive_int, default=20, help="training patients (2 frames each)")
    p.add_argument("--test-patients", type=non_negative_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=None, help="default: 20 on CPU, 50 on CUDA")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="iterations per epoch (default: 40 CPU, 100 CUDA)")
    p.add_argument("--configuration", default=None, help="default: 2d_tiny on CPU, 2d on CUDA")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="delete an existing --workdir first")
    p.add_argument("--seed", type=seed_int, default=None,
                   help="random seed shared by the trainings (NNUNET_SEMICL_SEED), so that their comparison is paired; "
                        "default: a new random one, printed")


def _step(msg):
    print(f"\n=== {time.strftime('%H:%M:%S')} {msg}", flush=True)


def _run(args, env, quiet=False):
    """Run a command, streaming its output (progress stays visible); raise with its tail on failure."""
    run_command(args, env, show=training_progress if quiet else (lambda line: True))


def run(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    # ~800 iterations on CPU: the semi-supervised terms start only once the supervised warm-up has found every
    # class, and need room after it (docs/demo.md: with 640, LabeledOnly once never found LVC and ACTION++ lost
    # RV and LVC)
    epochs = args.epochs or (50 if cuda else 20)
    iterations = args.iterations or (100 if cuda else 40)
    configuration = args.configuration or ("2d" if cuda else "2d_tiny")

    # one seed for every training: same initialisation and, on CPU, same batches, so a semi-supervised trainer's
    # warm-up repeats LabeledOnly's and the table shows what its unsupervised terms add (nnunet_semicl/seeding.py)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    parse_seed(seed, f"--seed {seed}", "leave --seed out")
    work = os.path.abspath(args.workdir)
    if os.path.exists(work) and os.listdir(work):
        if not args.overwrite:
            raise SystemExit(f"{work} already exists and is not empty. Pass --overwrite to replace it, or choose "
                             f"another --workdir.")
        shutil.rmtree(work)
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    env = nnunet_env(device, training=False, dirs=dirs)
    # on CUDA, 4 augmentation workers (on CPU the training settings run augmentation in-process)
    train_env = nnunet_env(device, training=True, dirs=dirs,
                           overrides={SEED_ENV: str(seed), **({"nnUNet_n_proc_DA": "4"} if cuda else {})})
    py = [sys.executable, "-m", "nnunet_semicl.cli"]
    t0 = time.time()
    print(f"nnunet_semicl demo on {device}: {args.trainers} on {configuration}, {epochs} epochs x {iterations} "
          f"iterations, {args.fraction:.0%} labeled, seed {seed} (--seed {seed} repeats it); workdir {work}", flush=True)

    _step("1/6 synthetic dataset")
    _run(py + ["synthetic", "--id", str(DATASET_ID), "--patients", str(args.patients), "--test-patients",
               str(args.test_patients), "--raw", dirs["nnUNet_raw"]], env)
    _step("2/6 nnUNetv2_plan_and_preprocess")
    _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-npfp", "2", "-np", "2",
          "--verify_dataset_integrity"], env)
    _step("3/6 labeled subset and (CPU) tiny configuration")
    if configuration.endswith("_tiny"):
        _run(py + ["tiny-config", str(DATASET_ID), "-c", configuration[: -len("_tiny")], *TINY_WIDTH], env)
    _run(py + ["split", str(DATASET_ID), "--fraction", str(args.fraction), "--group", r"phantom\d+", "--name",
               "demo", "--epochs", str(epochs), "--iterations", str(iterations), "--val-iterations", "5"], env)
    raw = os.path.join(dirs["nnUNet_raw"], DATASET)
    results = {}
    for i, trainer in enumerate(args.trainers):
        _step(f"4/6 nnUNetv2_train {trainer} ({i + 1}/{len(args.trainers)})")
        ts = time.time()
        _run(["nnUNetv2_train", DATASET_ID, configuration, "0", "-tr", trainer, "-p", "nnUNetPlans_demo",
              "-device", device], train_env, quiet=True)
        train_s = time.time() - ts
        _step(f"5/6 nnUNetv2_predict + nnUNetv2_evaluate_folder ({trainer})")
        out = os.path.join(work, "predictions", trainer)
        _run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DATASET_ID, "-c",
              configuration, "-f", "0", "-tr", trainer, "-p", "nnUNetPlans_demo", "-device", device, "-npp", "0",
              "-nps", "0", "--disable_progress_bar"], env, quiet=True)
        model = os.path.join(dirs["nnUNet_results"], DATASET, f"{trainer}__nnUNetPlans_demo__{configuration}")
        _run(["nnUNetv2_evaluate_folder", os.path.join(raw, "labelsTs"), out, "-djfile",
              os.path.join(model, "dataset.json"), "-pfile", os.path.join(model, "plans.json"), "-np", "2"],
             env, quiet=True)
        summary = json.load(open(os.path.join(out, "summary.json")))
        results[trainer] = ({str(k): v["Dice"] for k, v in summary["mean"].items()},
                            summary["foreground_mean"]["Dice"], train_s)

    _step("6/6 held-out Dice (nnUNetv2_evaluate_folder)")
    print(format_table(results))
    print(f"\nTotal {time.time() - t0:.0f} s. Results, logs and progress.png: "
          f"{os.path.join(dirs['nnUNet_results'], DATASET)}", flush=True)
    return results


def format_table(results) -> str:
    head = f"| {'trainer':<28} | " + " | ".join(f"{n:>6}" for n in LABELS) + " |   mean | train s |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for trainer, (per_class, mean, secs) in results.items():
        vals = " | ".join(f"{per_class.get(str(i + 1), float('nan')):6.3f}" for i in range(len(LABELS)))
        lines.append(f"| {trainer:<28} | {vals} | {mean:6.3f} | {secs:7.0f} |")
    return "\n".join(lines)


def main(argv=None):
    module_main("nnunet_semicl demo", add_arguments, run, argv)


if __name__ == "__main__":
    main()
