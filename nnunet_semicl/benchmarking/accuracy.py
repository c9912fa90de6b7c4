"""``nnunet_semicl benchmark accuracy``: every trainer trained from scratch on the real ACDC data (CPU scale), or
with ``--dataset la`` on the LA development copy (3D; the values that differ: ``accuracy_datasets.DATASETS``).

One command (resumable: finished runs are skipped, an interrupted one continues with ``--c``, or
only re-runs its validation when its final checkpoint exists):

1. ``nnunet_semicl convert-acdc -i ACDC_ssl4mis --allow-missing``: the SSL4MIS copy with the papers'
   protocol (fold 0 validates on the 10 validation patients) and the 1pct/5pct/10pct settings;
2. the stock ``nnUNetv2_plan_and_preprocess -d 27 -c 2d``, then the inherited configuration ``2d_cpu``
   added to ``nnUNetPlans.json``: the parent's spacing and preprocessed data, patch 128 x 128, batch 8
   (+ 8 unlabeled), a PlainConvUNet with 5 stages of widths 16-32-64-128-256, 3 x 3 kernels, strides
   1, 2, 2, 2, 2 and 2 convolutions per stage (``--spacing`` makes a reduced-resolution configuration
   with its own preprocessed data instead);
3. ``nnunet_semicl sync-plans 27`` creates ``nnUNetPlans_{1,5,10}pct``; the schedule (36 epochs x 50
   iterations, 10 validation iterations) goes into the settings' ``semicl.trainer`` block (what
   ``nnunet_semicl split --epochs/--iterations`` writes). Every further run of a trainer trains with a
   copy of the setting (same labeled cases, its own results folder; ``accuracy_runs``):
   ``--runs N``: ``5pct_run2`` ... (unseeded); ``--seeds S1 S2``: ``5pct_s<S>``, each run with
   ``NNUNET_SEMICL_SEED=S`` (not with ``--runs``); ``--variant NAME:TRAINER:KEY=VALUE[,KEY=VALUE...]``: the
   trainer with setting keys (``nnunet_semicl.data.overrides``, checked against the trainer class before
   anything trains) in ``5pct_NAME`` / ``5pct_NAME_s<S>``, whose ``semicl.trainer`` block holds the keys; its
   table row is NAME. Without ``--seeds`` a ``NNUNET_SEMICL_SEED`` in the environment seeds every run.
   ``fold_0/semicl_benchmark_run.json`` records each run's seed: a folder is continued or reused only with
   its seed and trainer block;
4. ``nnUNetv2_train 27 2d_cpu 0 -tr <trainer> -p nnUNetPlans_<setting copy> -device cpu`` for every trainer,
   variant, setting and seed (or run), from scratch; nnU-Net's final validation writes
   ``fold_0/validation/summary.json`` (the 20 validation frames at their original resolution);
5. a table of per-class Dice, mean, each seed's mean, seconds per iteration and wall time (JSON + markdown;
   the ``accuracy`` section of a docs file given with ``--update-docs``), and for every row the paired
   difference to ``nnUNetTrainerLabeledOnly`` and to ``nnUNetTrainerPseudoLabel`` (``accuracy_table``):
   runs paired by seed, per seed and averaged, with a standard error over volumes and seeds (the standard
   deviation of the per-volume differences of foreground-mean Dice, same case and seed, / sqrt(their count)).

A paired comparison of three trainers and one variant over two seeds::

    nnunet_semicl benchmark accuracy -i ../shared/data/ACDC_ssl4mis --workdir W --seeds 1 2 \\
        --trainers nnUNetTrainerLabeledOnly nnUNetTrainerPseudoLabel nnUNetTrainerACTIONpp \\
        --variant noDistill:nnUNetTrainerACTIONpp:relational_in_finetune=false

``--dataset la``: ``convert-la --allow-missing --protocol dev`` on the UA-MT copy's 30 volumes (fold 0 validates on
the 5 volumes of ``protocols.LA_DEV_VAL``; 5pct labels the first 4 of ``train.list``, the other 21 are unlabeled),
``nnUNetv2_plan_and_preprocess -c 3d_fullres --no_pp``, the inherited ``3d_cpu`` at 1.25 mm isotropic with its own
preprocessed data (``nnUNetv2_preprocess -c 3d_cpu``), patch 32 x 64 x 64, batch 2 (+ 2 unlabeled), widths
16-256, 3 x 3 x 3 kernels, strides 1, 2, 2, 2, (1, 2, 2); 30 epochs x 50 iterations; the same steps 3-5, and
HD95 / ASD per validation volume in the table (``accuracy_table.read_surface_metrics``).

``--warm-epochs N`` keeps the older protocol: a shared supervised warm start per setting
(``nnUNetTrainerLabeledOnly`` on ``nnUNetPlans_<setting>_warm``), then every trainer as
``<trainer>_warmStart`` (``nnunet_semicl.benchmarking.warm_start``) from its network (not with ``--seeds``
or ``--variant``).
"""
import argparse
import os
import shutil
import sys
import time
from typing import Dict, Optional, Sequence

from nnunet_semicl.argtypes import non_negative_int, positive_float, positive_int, seed_int
from nnunet_semicl.benchmarking.accuracy_datasets import DATASETS, dataset_of, reduced_configuration  # noqa: F401
from nnunet_semicl.benchmarking.accuracy_runs import (VARIANT_EXAMPLE, WARM_ROW, WARM_SUFFIX, WARM_TRAINER,
                                                      PlannedRun, check_seeds, parse_variants, plan_runs,
                                                      schedule_overrides)
from nnunet_semicl.benchmarking.accuracy_table import (add_paired_differences, average_runs,
                                                       format_accuracy_markdown, read_summary, read_surface_metrics)
from nnunet_semicl.benchmarking.common import (add_update_docs_argument, command_line, fmt, machine_info,
                                               shared_data_folder, update_docs_if_asked)
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import find_training_summary, load_json, save_json
from nnunet_semicl.launch import exit_2_on, nnunet_env, run_command, training_progress
from nnunet_semicl.seeding import SEED_ENV, seed_from_env

DEFAULT_TRAINERS = ("nnUNetTrainerLabeledOnly", "nnUNetTrainerMeanTeacher", "nnUNetTrainerPseudoLabel",
                    "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
                    "nnUNetTrainerARCO_SAG")
DEFAULT_SETTINGS = ("5pct",)
#: the widest stage of the protocols' U-Nets (the schedule, patch, batch, spacing: accuracy_datasets.DATASETS)
MAX_FEATURES = 256
#: the optional shared supervised warm start (``--warm-epochs``; off by default)
DEFAULT_WARM_EPOCHS = 0
DEFAULT_WARM_ITERATIONS = 25
WARM_START_SUFFIX = "_warmStart"   # nnunet_semicl/benchmarking/warm_start.py


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=tuple(DATASETS), default="acdc",
                   help="acdc: the 2D protocol on the SSL4MIS ACDC copy (2d_cpu); la: the 3D protocol on the UA-MT LA "
                        "development copy (3d_cpu, fold 0 validating on 5 volumes that no setting labels) (default acdc)")
    p.add_argument("-i", "--input", default=None, help="the SSL4MIS ACDC folder or the UA-MT LA folder (default: "
                                                       "../shared/data/ACDC_ssl4mis or LA_uamt beside the checkout "
                                                       "when present)")
    p.add_argument("--workdir", default="nnunet_semicl_accuracy",
                   help="folder for nnUNet_raw/preprocessed/results, logs and results (default ./nnunet_semicl_accuracy)")
    p.add_argument("--trainers", nargs="*", default=None,
                   help=f"default: {' '.join(DEFAULT_TRAINERS)}; with no name only the --variant rows train")
    p.add_argument("--settings", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_SETTINGS)}")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"default {DATASETS['acdc'].epochs} (ACDC), "
                                                                     f"{DATASETS['la'].epochs} (LA)")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help=f"iterations per epoch (default {DATASETS['acdc'].iterations})")
    p.add_argument("--val-iterations", type=positive_int, default=None,
                   help=f"validation iterations per epoch (default {DATASETS['acdc'].val_iterations})")
    p.add_argument("--warm-epochs", type=non_negative_int, default=None,
                   help=f"epochs of the shared supervised warm start (nnUNetTrainerLabeledOnly) per setting; 0: every "
                        f"trainer starts from scratch (default {DEFAULT_WARM_EPOCHS})")
    p.add_argument("--warm-iterations", type=positive_int, default=None,
                   help=f"iterations per warm-start epoch (default {DEFAULT_WARM_ITERATIONS})")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial learning rate of every trainer (default: nnU-Net's "
                        "0.01)")
    p.add_argument("--runs", type=positive_int, default=1,
                   help="unseeded runs of every trainer (run 2.. in copies of the setting; default 1; not with "
                        "--seeds)")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=None, metavar="S",
                   help="train every trainer and variant once per seed (NNUNET_SEMICL_SEED=S, in the setting copy "
                        "<setting>_s<S>): the rows are then paired by seed and validation volume")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:TRAINER:KEY=VALUE[,KEY=VALUE...]",
                   help=f"a trainer with setting keys (docs/trainers.md), trained in its own setting copy "
                        f"(<setting>_NAME[_s<S>]) and shown as row NAME; repeatable. E.g. {VARIANT_EXAMPLE}")
    p.add_argument("--spacing", type=positive_float, default=None,
                   help="spacing, mm (in-plane for ACDC, isotropic for LA): a reduced-resolution configuration with its "
                        "own preprocessed data (default: ACDC the 2d configuration's spacing and data, LA 1.25)")
    p.add_argument("--configuration", default=None, help="name of the added configuration (default 2d_cpu / 3d_cpu, "
                                                         "or 2d_<spacing>mm / 3d_<spacing>mm at another --spacing)")
    p.add_argument("--patch-size", type=positive_int, nargs="+", default=None,
                   help="one value per axis (default ACDC 128 128, LA 32 64 64; at another --spacing: the median "
                        "image, rounded up to the network's stride)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="labeled batch size (= unlabeled) (default ACDC 8, LA 2)")
    p.add_argument("--stages", type=positive_int, default=5, help="U-Net stages (default 5)")
    p.add_argument("--max-features", type=positive_int, default=MAX_FEATURES,
                   help=f"widest stage (default {MAX_FEATURES})")
    p.add_argument("--feature-divisor", type=positive_int, default=2,
                   help="nnU-Net's widths divided by this (default 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--redo", action="store_true", help="train again even when a run has finished")
    p.add_argument("--smoke", action="store_true", help="pipeline check: nnUNetTrainerLabeledOnly, 5pct, 1 epoch x 2 "
                                                        "iterations (other values with --trainers ...), default workdir "
                                                        "./nnunet_semicl_accuracy_smoke")
    add_update_docs_argument(p, "accuracy")


def resolve_options(args) -> dict:
    smoke = bool(args.smoke)
    ds = DATASETS[args.dataset]
    spacing = ds.spacing if args.spacing is None else float(args.spacing)
    if args.patch_size is not None and len(args.patch_size) != ds.dim:
        raise InputError(f"--patch-size {' '.join(map(str, args.patch_size))}: the {ds.title} protocol is {ds.dim}D, "
                         f"give {ds.dim} values.")
    if args.runs < 1:
        raise SystemExit(f"--runs must be at least 1, got {args.runs}")
    trainers = list(args.trainers if args.trainers is not None else
                    (["nnUNetTrainerLabeledOnly"] if smoke else DEFAULT_TRAINERS))
    warm_epochs = args.warm_epochs if args.warm_epochs is not None else DEFAULT_WARM_EPOCHS
    seeds = check_seeds(args.seeds, args.runs)
    variants = parse_variants(args.variant, trainers)
    if not trainers and not variants:
        raise InputError("--trainers without a name trains only the --variant rows: name trainers or give a "
                         "--variant NAME:TRAINER:KEY=VALUE.")
    if (seeds or variants) and warm_epochs > 0:
        raise InputError("--seeds and --variant train from scratch: leave out --warm-epochs (the warm-start "
                         "protocol trains one shared, unseeded warm start per setting).")
    return {
        "trainers": trainers,
        "settings": list(args.settings or (["5pct"] if smoke else DEFAULT_SETTINGS)),
        "dataset": ds.key,
        "epochs": args.epochs or (1 if smoke else ds.epochs),
        "iterations": args.iterations or (2 if smoke else ds.iterations),
        "val_iterations": args.val_iterations or (1 if smoke else ds.val_iterations),
        "lr": args.lr,
        "warm_epochs": warm_epochs,
        "warm_iterations": args.warm_iterations or (2 if smoke else DEFAULT_WARM_ITERATIONS),
        "runs": int(args.runs),
        "seeds": seeds,
        # without --seeds, a NNUNET_SEMICL_SEED of the caller's environment reaches every run: record it
        "inherited_seed": None if seeds else seed_from_env(),
        "variants": variants,
        "spacing": spacing,
        "configuration": args.configuration or ds.configuration_name(spacing),
        "patch_size": args.patch_size,
        "batch_size": args.batch_size or ds.batch_size,
        "stages": args.stages,
        "max_features": args.max_features,
        "feature_divisor": args.feature_divisor,
        "device": args.device,
        "smoke": smoke,
    }


# ------------------------------------------------------------------------------------------------
# pipeline
# ------------------------------------------------------------------------------------------------
def prepare(work: str, dirs: Dict[str, str], opts: dict, source: str, log: str, runs: Sequence[PlannedRun]) -> dict:
    """Convert, plan, add and preprocess the reduced configuration, write the settings' schedule and the
    setting copies that ``runs`` train with (idempotent)."""
    from nnunet_semicl.data.setting_files import write_plans_variant

    ds = dataset_of(opts)
    env = nnunet_env(opts["device"], training=False, dirs=dirs)
    cli = [sys.executable, "-m", "nnunet_semicl.cli"]
    pre = os.path.join(dirs["nnUNet_preprocessed"], ds.dataset)
    if not os.path.isfile(os.path.join(dirs["nnUNet_raw"], ds.dataset, "dataset.json")):
        print(f"\n== {' '.join(ds.converter)} (about 30 s)", flush=True)
        run_command(cli + [ds.converter[0], "-i", source, *ds.converter[1:], "-np", "2", "-q"], env, log)
    plans_path = os.path.join(pre, "nnUNetPlans.json")
    own_data = opts["spacing"] is not None   # a reduced-resolution configuration has its own preprocessed data
    plan_parent(work, ds, env, log, plans_path, preprocess=not own_data)
    plans = load_json(plans_path)
    cname = opts["configuration"]
    cfg = reduced_configuration(plans, opts)
    marker = os.path.join(work, f"preprocessed_{cname}.json")
    if plans["configurations"].get(cname) != cfg:
        if cname in plans["configurations"]:
            print(f"Configuration {cname} changed" + (": preprocessing it again" if own_data else ""), flush=True)
        plans["configurations"][cname] = cfg
        save_json(plans, plans_path)
        if os.path.isfile(marker):
            os.remove(marker)
    if own_data and (not os.path.isfile(marker) or load_json(marker).get("configuration") != cfg):
        data_dir = os.path.join(pre, cfg["data_identifier"])
        print(f"\n== nnUNetv2_preprocess -c {cname} (spacing {cfg['spacing']} mm; about a minute)", flush=True)
        if os.path.isdir(data_dir):
            shutil.rmtree(data_dir)
        run_command(["nnUNetv2_preprocess", "-d", ds.dataset_id, "-c", cname, "-plans_name", "nnUNetPlans", "-np",
                     "2"], env, log)
        save_json({"configuration": cfg}, marker)
    from nnunet_semicl.data.plans_tools import resolved_configuration
    resolved = resolved_configuration(load_json(plans_path), cname)
    run_command(cli + ["sync-plans", ds.dataset_id], env, log, echo=False)
    for setting in opts["settings"]:
        if not os.path.isfile(os.path.join(pre, f"splits_semicl_{setting}.json")):
            raise SystemExit(f"setting {setting} does not exist in {pre} (the converter writes 1pct, 5pct, 10pct)")
        write_plans_variant(pre, setting, "nnUNetPlans", overwrite=True, trainer_overrides=schedule_overrides(opts))
    copies = {r.plans_setting: r for r in runs if r.plans_setting != r.setting}
    for name, r in copies.items():   # the same labeled cases, another results folder (and trainer block)
        copy_setting(pre, r.setting, name, r.trainer_block, r.purpose)
    return resolved


def plan_parent(work: str, ds, env: dict, log: str, plans_path: str, preprocess: bool) -> None:
    """The stock ``nnUNetv2_plan_and_preprocess -c <parent>`` (``--no_pp`` when the protocol's configuration has
    its own preprocessed data), and the parent's preprocessing once a configuration on its data needs it."""
    marker = os.path.join(work, f"preprocessed_{ds.parent}.json")
    if not os.path.isfile(plans_path):
        print(f"\n== nnUNetv2_plan_and_preprocess -c {ds.parent}" + (" (about 3 min)" if preprocess else
                                                                     " (plans only; about 30 s)"), flush=True)
        run_command(["nnUNetv2_plan_and_preprocess", "-d", ds.dataset_id, "-c", ds.parent, "-np", "2", "-npfp", "2",
                     "--verify_dataset_integrity", "--no_pbar"] + ([] if preprocess else ["--no_pp"]), env, log)
        if preprocess:
            save_json({"configuration": ds.parent}, marker)
    if preprocess and not os.path.isfile(marker):
        # a work folder planned with --no_pp by an earlier --spacing run: preprocess the parent's data now
        print(f"\n== nnUNetv2_preprocess -c {ds.parent} (about 3 min)", flush=True)
        run_command(["nnUNetv2_preprocess", "-d", ds.dataset_id, "-c", ds.parent, "-plans_name", "nnUNetPlans", "-np",
                     "2"], env, log)
        save_json({"configuration": ds.parent}, marker)


def copy_setting(pre: str, setting: str, name: str, overrides: dict, purpose: str) -> None:
    """A copy of a setting's split file under another name (same labeled cases), with its plans variant."""
    from nnunet_semicl.data.setting_files import write_plans_variant

    content = load_json(os.path.join(pre, f"splits_semicl_{setting}.json"))
    content.update(setting=name, created_by=f"nnunet_semicl benchmark accuracy: copy of setting {setting} for {purpose}")
    save_json(content, os.path.join(pre, f"splits_semicl_{name}.json"))
    write_plans_variant(pre, name, "nnUNetPlans", overwrite=True, trainer_overrides=overrides)


def run_folder(dirs: Dict[str, str], trainer: str, setting: str, opts: dict) -> str:
    return os.path.join(dirs["nnUNet_results"], dataset_of(opts).dataset,
                        f"{trainer}__nnUNetPlans_{setting}__{opts['configuration']}")


def warm_start_checkpoint(dirs: Dict[str, str], opts: dict, setting: str) -> str:
    """The final checkpoint of a setting's shared supervised warm start (``--warm-epochs``)."""
    return os.path.join(run_folder(dirs, WARM_TRAINER, setting + WARM_SUFFIX, opts), "fold_0",
                        "checkpoint_final.pth")


def seconds_per_iteration(checkpoint: str, iterations: int) -> Optional[float]:
    """Median epoch duration (its validation iterations included) / training iterations per epoch."""
    import numpy as np

    from nnunet_semicl.training.labeled_only import read_checkpoint

    if not os.path.isfile(checkpoint):
        return None
    # weights_only=True (read_checkpoint): a checkpoint in the work folder could come from anywhere
    log = read_checkpoint(checkpoint, map_location="cpu")["logging"]
    durations = np.array(log["epoch_end_timestamps"]) - np.array(log["epoch_start_timestamps"])
    return float(np.median(durations)) / iterations if len(durations) else None


def write_warm_start_shim(work: str) -> str:
    """A folder for nnUNet_extTrainer with one module that re-exports the ``<trainer>_warmStart`` classes."""
    folder = os.path.join(work, "trainers")
    os.makedirs(folder, exist_ok=True)
    names = ", ".join(f"{t}{WARM_START_SUFFIX}" for t in DEFAULT_TRAINERS)
    with open(os.path.join(folder, "nnunet_semicl_benchmark_trainers.py"), "w") as f:
        f.write("# generated by nnunet_semicl benchmark accuracy: benchmark-only trainers (warm start), see\n"
                "# nnunet_semicl/benchmarking/warm_start.py\n"
                f"from nnunet_semicl.benchmarking.warm_start import {names}  # noqa: F401\n")
    return folder


def reuse_problem(used_overrides: Optional[dict], record: dict, overrides: dict, pretrained: Optional[str],
                  seed: Optional[int]) -> Optional[str]:
    """Why a results folder trained with the trainer block ``used_overrides`` (its plans.json) and recorded as
    ``record`` (semicl_benchmark_run.json) cannot be continued or reused for this run; None when it can. A
    record of an earlier version has no seed: not checked."""
    if used_overrides != overrides or record.get("pretrained", pretrained) != pretrained:
        return (f"was trained with the trainer block {used_overrides} (warm start {record.get('pretrained')}), not "
                f"{overrides} (warm start {pretrained})")
    if record.get("seed", seed) != seed:
        return f"was trained with NNUNET_SEMICL_SEED={record['seed']}, not {seed}"
    return None


def train_one(dirs, opts, trainer: str, setting: str, log: str, redo: bool, overrides: dict,
              pretrained: Optional[str] = None, shim: Optional[str] = None, seed: Optional[int] = None) -> dict:
    """Train (or continue, re-validate, or skip) one run; return its result row.

    ``pretrained``: a warm-start checkpoint; the run then uses ``<trainer>_warmStart`` (found in ``shim``).
    ``seed``: the run's NNUNET_SEMICL_SEED (recorded in semicl_benchmark_run.json)."""
    cname = opts["configuration"]
    model = run_folder(dirs, trainer, setting, opts)
    fold = os.path.join(model, "fold_0")
    summary = os.path.join(fold, "validation", "summary.json")
    record_file = os.path.join(fold, "semicl_benchmark_run.json")
    if redo and os.path.isdir(model):
        shutil.rmtree(model)
    record = load_json(record_file) if os.path.isfile(record_file) else {}
    if os.path.isfile(os.path.join(model, "plans.json")):
        used = load_json(os.path.join(model, "plans.json")).get("semicl", {}).get("trainer")
        problem = reuse_problem(used, record, overrides, pretrained, seed)
        if problem:
            raise SystemExit(f"{model} {problem}. Pass --redo to train it again, or use another --workdir.")
    if os.path.isfile(summary):
        row = {"status": "done before"}
    else:
        extra = []
        if os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
            extra = ["--val"]
        elif os.path.isfile(os.path.join(fold, "checkpoint_latest.pth")):
            extra = ["--c"]
        device = opts["device"]
        env_extra = {} if seed is None else {SEED_ENV: str(seed)}
        if pretrained:
            if not os.path.isfile(pretrained):
                raise SystemExit(f"the warm-start checkpoint {pretrained} does not exist")
            ext = [shim] + [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
            env_extra.update({"NNUNET_SEMICL_WARM_START": pretrained, "nnUNet_extTrainer": os.pathsep.join(ext)})
        env = nnunet_env(device, training=True, dirs=dirs, overrides=env_extra)
        # recorded before training starts, so that an interrupted run is continued only with the same seed
        record = {"wall_s": record.get("wall_s", 0.0), "pretrained": pretrained, "seed": seed}
        save_json(record, record_file)
        t = time.time()
        run_command(["nnUNetv2_train", dataset_of(opts).dataset_id, cname, "0", "-tr", trainer, "-p", f"nnUNetPlans_{setting}",
                     "-device", device] + extra, env, log, show=training_progress, indent="    ")
        save_json(dict(record, wall_s=record["wall_s"] + time.time() - t), record_file)
        row = {"status": "trained" + (f" ({extra[0]})" if extra and extra[0] in ("--val", "--c") else "")}
    ds = dataset_of(opts)
    row.update(read_summary(summary, ds.classes))
    if ds.surface_metrics:   # the papers' LA table: HD95 and ASD per volume
        pre = os.path.join(dirs["nnUNet_preprocessed"], ds.dataset)
        row.update(read_surface_metrics(os.path.join(fold, "validation"), os.path.join(pre, "gt_segmentations"),
                                        os.path.join(pre, "dataset.json"), ds.classes))
    training = find_training_summary(fold)
    if training is not None:   # a method whose unsupervised terms never ran is LabeledOnly training: say so
        row["unsupervised_terms_ran"] = training.get("unsupervised_terms_ran")
        if not training.get("unsupervised_terms_ran"):
            print(f"    {training.get('message')}")
    record = load_json(record_file) if os.path.isfile(record_file) else {}
    row["wall_s"] = record.get("wall_s")
    row["seed"] = record.get("seed", seed)
    row["s_per_it"] = seconds_per_iteration(os.path.join(fold, "checkpoint_final.pth"),
                                            int(overrides["num_iterations_per_epoch"]))
    return row


def run(args) -> dict:
    # before torch starts its OpenMP threads (here or in the subprocesses): docs/small_compute.md
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with exit_2_on("benchmark accuracy", InputError):   # a user's error, before anything is written
        opts = resolve_options(args)
    work = os.path.abspath(args.workdir + ("_smoke" if opts["smoke"] and args.workdir == "nnunet_semicl_accuracy"
                                           else ""))
    ds = dataset_of(opts)
    source = args.input or shared_data_folder(ds.shared_folder, ds.shared_marker)
    if not source or not os.path.isdir(source):
        raise SystemExit(f"Pass -i /path/to/{ds.shared_folder} (docs/datasets.md: the {ds.title} copy and its *.list "
                         f"files).")
    if opts["device"] == "auto":
        import torch
        opts["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in list(dirs.values()) + [os.path.join(work, "logs")]:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(work, ".gitignore"), "w") as f:
        f.write("# derived from research-only data: never commit\n*\n")
    t0 = time.time()
    runs = plan_runs(opts)
    repeats = f"seeds {' '.join(map(str, opts['seeds']))}" if opts["seeds"] else f"{opts['runs']} run(s)"
    print(f"nnunet_semicl benchmark accuracy: {len(opts['trainers'])} trainers + {len(opts['variants'])} variants x "
          f"{len(opts['settings'])} settings x {repeats}, {opts['epochs']} epochs x {opts['iterations']} iterations, "
          f"device {opts['device']}; workdir {work}", flush=True)
    if opts["inherited_seed"] is not None:
        print(f"Every run is seeded by the environment's {SEED_ENV}={opts['inherited_seed']}", flush=True)
    warm = opts["warm_epochs"] > 0
    shim = None
    if warm:  # per setting: the warm start first, then every trainer from it
        unsupported = [t for t in opts["trainers"] if t not in DEFAULT_TRAINERS]
        if unsupported:
            raise SystemExit(f"no warm-start variant of {unsupported} (nnunet_semicl/benchmarking/warm_start.py); "
                             f"pass --warm-epochs 0 to train them from scratch")
        shim = write_warm_start_shim(work)
    cfg = prepare(work, dirs, opts, source, os.path.join(work, "logs", "prepare.log"), runs)
    per_run: Dict[str, Dict[str, list]] = {}
    for i, r in enumerate(runs):
        pretrained = warm_start_checkpoint(dirs, opts, r.setting) if warm and r.row != WARM_ROW else None
        name = r.trainer + WARM_START_SUFFIX if pretrained else r.trainer
        print(f"\n== [{i + 1}/{len(runs)}] {r.row}: {name} -p nnUNetPlans_{r.plans_setting}"
              + (f" ({SEED_ENV}={r.seed})" if r.seed is not None else "")
              + (" (from the warm start)" if pretrained else "") + f"   ({(time.time() - t0) / 60:.1f} min elapsed)",
              flush=True)
        row = train_one(dirs, opts, name, r.plans_setting, os.path.join(work, "logs", f"{r.plans_setting}_{name}.log"),
                        args.redo, r.trainer_block, pretrained, shim, r.seed)
        row["pair_key"] = r.pair_key
        per_run.setdefault(r.row, {}).setdefault(r.setting, []).append(row)
        dice = ", ".join(f"{name} {fmt(row.get(name))}" for _, name in ds.classes)
        surface = "".join(f", {c} {fmt(row[c], 2)} mm" for c in ("HD95", "ASD") if c in row)
        print(f"   {row['status']}: Dice {dice}, mean {fmt(row['mean'])}{surface}, {fmt(row.get('s_per_it'), 2)} s/it",
              flush=True)
    results = {t: {s: average_runs(rows, ds.classes) for s, rows in per.items()} for t, per in per_run.items()}
    add_paired_differences(results)
    report = {"machine": machine_info(opts["device"], os.cpu_count()), "options": opts,
              "command": command_line("accuracy"),
              "configuration": {k: cfg.get(k) for k in ("patch_size", "batch_size", "spacing", "data_identifier")},
              "architecture": cfg["architecture"]["arch_kwargs"]["features_per_stage"],
              "results": results, "wall_s": round(time.time() - t0, 1)}
    md = format_accuracy_markdown(report)
    save_json(report, os.path.join(work, "accuracy.json"))
    with open(os.path.join(work, "accuracy.md"), "w") as f:
        f.write(md + "\n")
    print("\n" + md, flush=True)
    update_docs_if_asked(args.update_docs, "accuracy", md)
    print(f"\nResults: {os.path.join(work, 'accuracy.json')} and accuracy.md ({(time.time() - t0) / 60:.1f} min)",
          flush=True)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_semicl benchmark accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
