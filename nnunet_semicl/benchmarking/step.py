"""``nnunet_semicl benchmark step``: seconds per training iteration and peak memory of every trainer.

One run measures every trainer on the same plans, configuration and batch:

1. the dataset is built by the command itself (unless ``--dataset``): the built-in synthetic phantoms
   (``generate_dataset``), stock ``nnUNetv2_plan_and_preprocess -c 2d``, and a setting from
   ``nnunet_semicl split`` (10% labeled patients); ``--smoke`` adds and uses ``2d_tiny``;
2. one labeled and one unlabeled batch are drawn once (nnU-Net's loaders, fixed seeds) and saved:
   every trainer trains on exactly these tensors;
3. each measurement runs in a fresh subprocess (so peak RSS is per trainer): the trainer is built
   as ``nnUNetv2_train`` builds it, ``current_epoch`` is set into the middle of the phase measured
   (the fine-tuning phase of multi-phase trainers by default), ``on_train_start`` runs (dataloaders,
   teacher sync, ``global_step``), queues / memory banks / the NN pool are filled to capacity (the
   steady state of a long run), then ``--warmup`` + ``--steps`` calls of ``train_step`` are timed;
4. the trainers are interleaved over ``--reps`` repetitions, each in another order, so that slow
   drifts of the machine hit every trainer alike; the summary takes medians.

Memory: on CPU the peak RSS of the process during the timed steps (``VmHWM`` after resetting it just
before the first step) and its increase over the RSS just before the first step; on CUDA
``torch.cuda.max_memory_allocated``. ``nnUNetTrainerMeanTeacher_teacherSeesLabeled`` (a benchmark-only
subclass) feeds ``cat(labeled, unlabeled)`` through the teacher as ACTION++/MONA/ARCO do in
fine-tuning, which separates the method-mandated extra teacher pass from the contrastive machinery.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from nnunet_semicl.argtypes import non_negative_int, positive_int
from nnunet_semicl.benchmarking.common import (add_update_docs_argument, command_line, machine_info,
                                               update_docs_if_asked)
from nnunet_semicl.benchmarking.step_report import format_step_markdown, summarize
from nnunet_semicl.benchmarking.step_trainers import (COMPILED, DEFAULT_TRAINERS, PRETRAIN_ENTRIES, SMOKE_TRAINERS,
                                                      parse_entry)
from nnunet_semicl.dataset_conversion.synthetic import DATASET, DATASET_ID
from nnunet_semicl.files import load_json, save_json
from nnunet_semicl.launch import nnunet_env, run_command

# this module: the command line and the driver (no torch / nnU-Net import); step_trainers: the entries and
# how a trainer is built; step_worker: the measuring subprocess; step_report: summary and markdown

SETTING = "bench"


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="nnunet_semicl_benchmark",
                   help="folder for the phantom dataset, the fixed batch, logs and results (default ./nnunet_semicl_benchmark)")
    p.add_argument("--trainers", nargs="+", default=None,
                   help="entries NAME or NAME@PHASE (phase: global, local, finetune; default finetune for multi-phase "
                        f"trainers). Default: {' '.join(DEFAULT_TRAINERS)}")
    p.add_argument("--pretrain", action="store_true", help="also measure the pre-training phases: "
                                                           + " ".join(PRETRAIN_ENTRIES))
    p.add_argument("--reps", type=positive_int, default=3, help="repetitions, trainers interleaved (default 3)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed train_step calls per measurement (default 10)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed train_step calls first (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: the CPU count, as nnUNetv2_train sets it)")
    p.add_argument("--dataset", default=None,
                   help="benchmark an existing dataset of $nnUNet_preprocessed instead of the phantoms (id or name); "
                        "needs --plans naming a setting variant (e.g. nnUNetPlans_5pct)")
    p.add_argument("--plans", default=None, help=f"plans identifier (default nnUNetPlans_{SETTING} of the phantoms)")
    p.add_argument("-c", "--configuration", default=None, help="default 2d (2d_tiny with --smoke)")
    p.add_argument("--patients", type=positive_int, default=20,
                   help="phantom training patients, 2 frames each (default 20)")
    p.add_argument("--phantom-shape", type=positive_int, nargs=3, default=[10, 64, 64], metavar=("Z", "Y", "X"),
                   help="phantom volume shape (default 10 64 64; the real 2d plan is then 64x64, batch 20)")
    p.add_argument("--compile", action="store_true", help="let nnU-Net torch.compile the stock trainer on CUDA "
                                                           "(default off for every trainer: nnUNet_compile=f)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny check: 2d_tiny, 6 patients, {' '.join(SMOKE_TRAINERS)}, 1 rep x 2 steps (1 warm-up)")
    add_update_docs_argument(p, "step")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds per measurement subprocess")


def resolve_options(args) -> dict:
    """The effective settings of a run (smoke defaults applied)."""
    smoke = bool(args.smoke)
    trainers = list(args.trainers) if args.trainers else list(SMOKE_TRAINERS if smoke else DEFAULT_TRAINERS)
    if args.pretrain:
        trainers += [e for e in PRETRAIN_ENTRIES if e not in trainers]
    return {
        "trainers": trainers,
        "reps": 1 if smoke and args.reps == 3 else args.reps,
        "steps": 2 if smoke and args.steps == 10 else args.steps,
        "warmup": 1 if smoke and args.warmup == 3 else args.warmup,
        "patients": 6 if smoke and args.patients == 20 else args.patients,
        "configuration": args.configuration or ("2d_tiny" if smoke else "2d"),
        "plans": args.plans or f"nnUNetPlans_{SETTING}",
        "device": args.device,
        "threads": args.threads or os.cpu_count(),
        "compile": bool(args.compile),
        "phantom_shape": list(args.phantom_shape),
        "dataset": args.dataset,
        "smoke": smoke,
    }


def interleaved_orders(entries: Sequence[str], reps: int, seed: int = 0) -> List[List[str]]:
    """One order per repetition: the given order first, then reversed, then seeded shuffles."""
    orders = []
    for r in range(reps):
        if r == 0:
            order = list(entries)
        elif r == 1:
            order = list(reversed(entries))
        else:
            order = list(entries)
            random.Random(seed + r).shuffle(order)
        orders.append(order)
    return orders


# ------------------------------------------------------------------------------------------------
# driver (parent process: no torch / nnU-Net import)
# ------------------------------------------------------------------------------------------------
def _env(work: str, opts: dict, for_training: bool) -> Dict[str, str]:
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed")} if opts["dataset"] is None else {}
    dirs["nnUNet_results"] = os.path.join(work, "nnUNet_results")  # trainer logs never go to the user's results
    overrides = {}
    if for_training:
        overrides["nnUNet_n_proc_DA"] = "0"  # on every device: data loading is timed apart from the step
        if not opts["compile"]:
            overrides["nnUNet_compile"] = "f"
    return nnunet_env(opts["device"], for_training, dirs, overrides)


def prepare_phantoms(work: str, opts: dict) -> str:
    """Generate, plan and preprocess the phantoms and write the 10% setting (skipped when done)."""
    marker = os.path.join(work, "prepared.json")
    want = {"dataset": DATASET, "patients": opts["patients"], "phantom_shape": opts["phantom_shape"],
            "tiny": opts["configuration"].endswith("_tiny")}
    if os.path.isfile(marker):
        have = load_json(marker)
        if {k: have.get(k) for k in want if k != "tiny"} != {k: v for k, v in want.items() if k != "tiny"}:
            raise SystemExit(f"{work} holds a benchmark dataset built with other options ({have}); use another "
                             f"--workdir or delete it.")
        if want["tiny"] and not have.get("tiny"):
            env = _env(work, opts, for_training=False)
            run_command([sys.executable, "-m", "nnunet_semicl.cli", "tiny-config", DATASET_ID, "-c", "2d"], env,
                        os.path.join(work, "logs", "prepare.log"))
            save_json(dict(have, tiny=True), marker)
        return DATASET
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.path.join(work, k), exist_ok=True)
        partial = os.path.join(work, k, DATASET)
        if k != "nnUNet_results" and os.path.isdir(partial):
            shutil.rmtree(partial)  # an interrupted preparation of our own dataset: start it again
    env = _env(work, opts, for_training=False)
    log = os.path.join(work, "logs", "prepare.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"Preparing the phantom dataset in {work} (about a minute)", flush=True)
    from nnunet_semicl.dataset_conversion.synthetic import generate_dataset
    generate_dataset(env["nnUNet_raw"], DATASET_ID, n_patients=opts["patients"], n_test_patients=0,
                     shape=tuple(opts["phantom_shape"]), verbose=True)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "2", "-npfp", "2",
                 "--verify_dataset_integrity", "--no_pbar"], env, log)
    cli = [sys.executable, "-m", "nnunet_semicl.cli"]
    if want["tiny"]:
        run_command(cli + ["tiny-config", DATASET_ID, "-c", "2d"], env, log)
    run_command(cli + ["split", DATASET_ID, "--fraction", "0.1", "--group", r"phantom\d+", "--name", SETTING], env, log)
    save_json(want, marker)
    return DATASET


def _worker(work: str, opts: dict, mode: str, entry: Optional[str], out: str, log: str, timeout: int,
            dataset: str) -> dict:
    spec = dict(opts, mode=mode, entry=entry, out=out, dataset_name=dataset,
                batch_file=os.path.join(work, "fixed_batch.pt"))
    spec_path = out + ".spec.json"
    save_json(spec, spec_path)
    env = _env(work, opts, for_training=True)
    if entry and parse_entry(entry)[0].endswith(COMPILED):
        env["nnUNet_compile"] = "t"   # NAME+compile: nnU-Net's torch.compile, our trainers' allow_compile forced on
    with open(log, "a") as f:
        f.write(f"\n===== {time.strftime('%H:%M:%S')} {mode} {entry}\n")
        f.flush()
        code = f"from nnunet_semicl.benchmarking.step_worker import worker_main; worker_main({spec_path!r})"
        proc = subprocess.run([sys.executable, "-c", code],
                              env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not os.path.isfile(out):
        with open(log) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"benchmark worker failed ({mode} {entry}, exit {proc.returncode}); log {log}:\n{tail}")
    return load_json(out)


def run(args) -> dict:
    # before torch starts its OpenMP threads (here or in the subprocesses): docs/small_compute.md
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    opts = resolve_options(args)
    work = os.path.abspath(args.workdir)
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "runs"), exist_ok=True)
    with open(os.path.join(work, ".gitignore"), "w") as f:
        f.write("# generated by nnunet_semicl benchmark step\n*\n")
    for e in opts["trainers"]:
        parse_entry(e)
    if opts["dataset"] is None:
        dataset = prepare_phantoms(work, opts)
    else:
        if not args.plans:
            raise SystemExit("--dataset needs --plans naming a semi-supervised setting (e.g. nnUNetPlans_5pct)")
        dataset = opts["dataset"]
    log = os.path.join(work, "logs", "workers.log")
    t0 = time.time()
    print(f"Drawing the fixed batch ({opts['configuration']}, {opts['plans']})", flush=True)
    batch_info = _worker(work, opts, "draw", "nnUNetTrainerPseudoLabel", os.path.join(work, "runs", "draw.json"),
                         log, args.timeout, dataset)
    orders = interleaved_orders(opts["trainers"], opts["reps"])
    n_total = sum(len(o) for o in orders)
    results, failures = [], []
    k = 0
    for rep, order in enumerate(orders):
        for entry in order:
            k += 1
            out = os.path.join(work, "runs", f"rep{rep}_{entry.replace('@', '_')}.json")
            if os.path.isfile(out):
                os.remove(out)
            try:
                res = _worker(work, opts, "measure", entry, out, log, args.timeout, dataset)
            except (SystemExit, subprocess.TimeoutExpired) as e:  # report it, measure the others
                failures.append({"label": entry, "rep": rep, "error": str(e)[-2000:]})
                print(f"[{k}/{n_total}] rep {rep + 1}/{len(orders)} {entry}: FAILED (see {log})\n{str(e)[-1500:]}",
                      flush=True)
                continue
            res["rep"] = rep
            results.append(res)
            save_json({"results": results, "failures": failures}, os.path.join(work, "step_cost.partial.json"))
            mem = res["cuda_peak_mb"] if opts["device"] == "cuda" else res["peak_rss_mb"]
            print(f"[{k}/{n_total}] rep {rep + 1}/{len(orders)} {entry:<48} {res['median_s']:.3f} s/it "
                  f"(data {res['data_s']:.3f} s), peak {mem:.0f} MB   [{time.time() - t0:.0f} s]", flush=True)
    if not results:
        raise SystemExit(f"every measurement failed; see {log}")
    machine = machine_info(opts["device"], opts["threads"])
    summary = summarize(results, opts["device"])
    report = {"machine": machine, "options": opts, "batch": batch_info, "orders": orders,
              "command": command_line("step"),
              "summary": summary, "results": results, "failures": failures, "wall_s": round(time.time() - t0, 1)}
    md = format_step_markdown(report)
    save_json(report, os.path.join(work, "step_cost.json"))
    with open(os.path.join(work, "step_cost.md"), "w") as f:
        f.write(md + "\n")
    print("\n" + md, flush=True)
    update_docs_if_asked(args.update_docs, "step", md)
    print(f"\nResults: {os.path.join(work, 'step_cost.json')} and step_cost.md ({time.time() - t0:.0f} s)", flush=True)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_semicl benchmark step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))
