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

from nnunet_semicl.benchmarking.common import (MB, add_update_docs_argument, fmt, fmt_pct, format_machine,
                                               machine_info, markdown_table, median, ratio, update_docs_if_asked)
from nnunet_semicl.data.splits import load_json, save_json
from nnunet_semicl.launch import nnunet_env, run_command

STOCK = "nnUNetTrainer"
MEAN_TEACHER = "nnUNetTrainerMeanTeacher"
MT_TEACHER_LABELED = "nnUNetTrainerMeanTeacher_teacherSeesLabeled"
DEFAULT_TRAINERS = (STOCK, "nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel", MEAN_TEACHER, MT_TEACHER_LABELED,
                    "nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
                    "nnUNetTrainerARCO_SAG")
METHODS = ("nnUNetTrainerACTION", "nnUNetTrainerACTIONpp", "nnUNetTrainerMONA", "nnUNetTrainerARCO",
           "nnUNetTrainerARCO_SAG")
#: pre-training phases (``--pretrain``); ARCO's pre-training is MONA's
PRETRAIN_ENTRIES = ("nnUNetTrainerACTION@global", "nnUNetTrainerACTION@local", "nnUNetTrainerACTIONpp@global",
                    "nnUNetTrainerACTIONpp@local", "nnUNetTrainerMONA@local")
SMOKE_TRAINERS = (STOCK, MEAN_TEACHER)
#: entry suffix: the trainer with ``nnUNet_compile=t`` and ``allow_compile = True`` (our trainers default to eager)
COMPILED = "+compile"
TARGET_TIME = 0.10    # contrastive machinery: at most +10% of the mean-teacher step time
TARGET_MEMORY = 0.15  # ... and at most +15% of its peak memory

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID:03d}_SemiCLPhantom"
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
    p.add_argument("--reps", type=int, default=3, help="repetitions, trainers interleaved (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed train_step calls per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed train_step calls first (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the CPU count, as nnUNetv2_train sets it)")
    p.add_argument("--dataset", default=None,
                   help="benchmark an existing dataset of $nnUNet_preprocessed instead of the phantoms (id or name); "
                        "needs --plans naming a setting variant (e.g. nnUNetPlans_5pct)")
    p.add_argument("--plans", default=None, help=f"plans identifier (default nnUNetPlans_{SETTING} of the phantoms)")
    p.add_argument("-c", "--configuration", default=None, help="default 2d (2d_tiny with --smoke)")
    p.add_argument("--patients", type=int, default=20, help="phantom training patients, 2 frames each (default 20)")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=[10, 64, 64], metavar=("Z", "Y", "X"),
                   help="phantom volume shape (default 10 64 64; the real 2d plan is then 64x64, batch 20)")
    p.add_argument("--compile", action="store_true", help="let nnU-Net torch.compile the stock trainer on CUDA "
                                                           "(default off for every trainer: nnUNet_compile=f)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny check: 2d_tiny, 6 patients, {' '.join(SMOKE_TRAINERS)}, 1 rep x 2 steps (1 warm-up)")
    add_update_docs_argument(p, "step")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement subprocess")


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


def parse_entry(entry: str):
    """'NAME@phase' -> (NAME, phase or None)."""
    name, _, phase = entry.partition("@")
    if phase and phase not in ("global", "local", "finetune"):
        raise SystemExit(f"unknown phase '{phase}' in '{entry}' (global, local or finetune)")
    return name, (phase or None)


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
        code = f"from nnunet_semicl.benchmarking.step import worker_main; worker_main({spec_path!r})"
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
              "command": "nnunet_semicl benchmark step " + " ".join(sys.argv[3:] if sys.argv[1:2] == ["benchmark"]
                                                                  else sys.argv[1:]),
              "summary": summary, "results": results, "failures": failures, "wall_s": round(time.time() - t0, 1)}
    md = format_step_markdown(report)
    save_json(report, os.path.join(work, "step_cost.json"))
    with open(os.path.join(work, "step_cost.md"), "w") as f:
        f.write(md + "\n")
    print("\n" + md, flush=True)
    update_docs_if_asked(args.update_docs, "step", md)
    print(f"\nResults: {os.path.join(work, 'step_cost.json')} and step_cost.md ({time.time() - t0:.0f} s)", flush=True)
    return report


# ------------------------------------------------------------------------------------------------
# summary and markdown (pure)
# ------------------------------------------------------------------------------------------------
def memory_key(device: str) -> str:
    return "cuda_peak_mb" if device == "cuda" else "peak_rss_mb"


def summarize(results: List[dict], device: str = "cpu") -> dict:
    """Medians per entry over repetitions, ratios to the stock trainer and the mean teacher, and the
    breakdown of every method's extra cost (teacher pass on labeled images vs contrastive machinery)."""
    mkey = memory_key(device)
    entries: Dict[str, dict] = {}
    for r in results:
        e = entries.setdefault(r["label"], {"label": r["label"], "trainer": r["trainer"], "phase": r.get("phase"),
                                            "teacher_sees_labeled": r.get("teacher_sees_labeled", False),
                                            "rep_medians": [], "steps": [], "data": [], "mem": [], "inc": [],
                                            "state_mb": r.get("state_mb", 0.0), "heads_mb": r.get("heads_mb", 0.0)})
        e["rep_medians"].append(r["median_s"])
        e["steps"].extend(r.get("times", []))
        e["data"].append(r.get("data_s"))
        e["mem"].append(r.get(mkey))
        e["inc"].append(r.get("cuda_increase_mb") if device == "cuda" else r.get("rss_increase_mb"))
        if r.get("breakdown"):
            e.setdefault("breakdowns", []).append(r["breakdown"])
    rows = {}
    for label, e in entries.items():
        rows[label] = {
            "label": label, "trainer": e["trainer"], "phase": e["phase"],
            "teacher_sees_labeled": e["teacher_sees_labeled"],
            "step_s": median(e["rep_medians"]), "step_s_min": min(e["rep_medians"]),
            "step_s_max": max(e["rep_medians"]), "step_s_pooled": median(e["steps"]), "n_steps": len(e["steps"]),
            "reps": len(e["rep_medians"]), "data_s": median(e["data"]), "peak_mb": median(e["mem"]),
            "increase_mb": median(e["inc"]), "state_mb": e["state_mb"], "heads_mb": e["heads_mb"],
            "breakdown": ({k: median(b.get(k) for b in e["breakdowns"]) for k in sorted({k for b in e["breakdowns"]
                                                                                        for k in b})}
                          if e.get("breakdowns") else None),
        }
    stock, mt, mtl = rows.get(STOCK), rows.get(MEAN_TEACHER), rows.get(MT_TEACHER_LABELED)
    for row in rows.values():
        row["x_stock"] = ratio(row["step_s"], stock and stock["step_s"])
        row["x_mean_teacher"] = ratio(row["step_s"], mt and mt["step_s"])
        row["mem_x_stock"] = ratio(row["peak_mb"], stock and stock["peak_mb"])
        row["mem_x_mean_teacher"] = ratio(row["peak_mb"], mt and mt["peak_mb"])
    breakdown = []
    for label, row in rows.items():
        if row["trainer"] not in METHODS or (row["phase"] not in (None, "finetune")) or mt is None:
            continue
        tl = bool(row["teacher_sees_labeled"])
        ref = mtl if tl else mt
        b = {"label": label, "teacher_sees_labeled": tl, "reference": ref["label"] if ref else None,
             "total_time": ratio(row["step_s"], mt["step_s"]) - 1.0,
             "teacher_pass_time": (ratio(mtl and mtl["step_s"], mt["step_s"]) - 1.0) if tl else 0.0,
             "machinery_time": ratio(row["step_s"] - ref["step_s"], mt["step_s"]) if ref else float("nan"),
             "total_memory": ratio(row["peak_mb"], mt["peak_mb"]) - 1.0,
             "teacher_pass_memory": (ratio(mtl and mtl["peak_mb"], mt["peak_mb"]) - 1.0) if tl else 0.0,
             "machinery_memory": ratio(row["peak_mb"] - ref["peak_mb"], mt["peak_mb"]) if ref else float("nan"),
             "machinery_increase": (ratio(row["increase_mb"] - ref["increase_mb"], mt["increase_mb"])
                                    if ref else float("nan")),
             "state_mb": row["state_mb"]}
        b["time_ok"] = _within(b["machinery_time"], TARGET_TIME)
        b["memory_ok"] = _within(b["machinery_memory"], TARGET_MEMORY)
        breakdown.append(b)
    return {"rows": list(rows.values()), "breakdown": breakdown, "memory": mkey,
            "targets": {"machinery_time": TARGET_TIME, "machinery_memory": TARGET_MEMORY}}


def _within(value: float, target: float) -> Optional[bool]:
    """value <= target; None when the value could not be computed (a reference was not measured)."""
    return None if value is None or value != value else bool(value <= target)


def _flag(ok: Optional[bool]) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _short(label: str) -> str:
    return label.replace("nnUNetTrainer", "") or "nnUNetTrainer"


def format_step_markdown(report: dict) -> str:
    s, o, b = report["summary"], report["options"], report.get("batch", {})
    cuda = o["device"] == "cuda"
    mem_name = "peak CUDA MB" if cuda else "peak RSS MB"
    inc_name = "Δ over pre-step MB"
    rows = []
    for r in s["rows"]:
        rows.append([f"`{r['trainer']}`",
                     r["phase"] or "-", fmt(r["step_s"]), f"{fmt(r['step_s_min'])}–{fmt(r['step_s_max'])}",
                     fmt(r["data_s"]), fmt(r["x_stock"], 2), fmt(r["x_mean_teacher"], 2), fmt(r["peak_mb"], 0),
                     fmt(r["increase_mb"], 0), fmt(r["mem_x_mean_teacher"], 2), fmt(r["state_mb"], 0)])
    t1 = markdown_table(["trainer", "phase", "s/it", "range over reps", "data s/it", "× nnUNetTrainer",
                         "× MeanTeacher", mem_name, inc_name, "mem × MT", "state MB"], rows, "llrrrrrrrrr")
    brows = []
    for x in s["breakdown"]:
        brows.append([f"`{x['label']}`", "yes" if x["teacher_sees_labeled"] else "no", fmt_pct(x["total_time"]),
                      fmt_pct(x["teacher_pass_time"]), fmt_pct(x["machinery_time"]),
                      _flag(x["time_ok"]), fmt_pct(x["total_memory"]),
                      fmt_pct(x["teacher_pass_memory"]), fmt_pct(x["machinery_memory"]),
                      _flag(x["memory_ok"]), fmt_pct(x["machinery_increase"]),
                      fmt(x["state_mb"], 0)])
    t2 = markdown_table(["method (fine-tuning)", "teacher sees labeled", "time vs MT", "extra teacher pass",
                         "contrastive machinery", f"≤ {TARGET_TIME:.0%}", "memory vs MT", "extra teacher pass",
                         "contrastive machinery", f"≤ {TARGET_MEMORY:.0%}", "machinery, Δ-memory", "state MB"],
                        brows, "llrrrlrrrlrr") if brows else "(no method measured together with the mean teacher)"
    t3 = format_breakdown_table(s["rows"])
    shape = b.get("labeled_shape"), b.get("unlabeled_shape")
    lines = [
        f"Measured {report['machine'].get('date')} with `{report.get('command', 'nnunet_semicl benchmark step')}`"
        + (" (**smoke run: not a measurement**)" if o.get("smoke") else "") + ".",
        "",
        f"- Machine: {format_machine(report['machine'])}.",
        f"- Data: {'synthetic phantoms (' + str(o['patients']) + ' patients x 2 frames, volume ' + 'x'.join(map(str, o['phantom_shape'])) + ')' if o.get('dataset') is None else o['dataset']}, "
        f"configuration `{o['configuration']}` of plans `{o['plans']}`: patch {b.get('patch_size')}, batch "
        f"{shape[0]} labeled + {shape[1]} unlabeled, network {b.get('network_params_m', '?')} M parameters.",
        f"- {o['reps']} repetitions (trainers interleaved, another order each time) x {o['steps']} timed steps after "
        f"{o['warmup']} warm-up steps; every step on the same fixed batch; queues, memory banks and the NN pool filled "
        f"to capacity; weights at initialization; medians over repetitions (range: the repetition medians). "
        f"`data s/it`: nnU-Net's loaders in the main process (`nnUNet_n_proc_DA=0`), labeled (+ unlabeled) batch, not "
        f"included in `s/it`.",
        f"- Memory: {'`torch.cuda.max_memory_allocated` during the timed steps' if cuda else 'peak RSS of the measuring process during the timed steps (`VmHWM` reset before the first step); Δ = peak minus the RSS just before the first step'}; "
        f"`state MB`: queues, memory banks, centroids and the NN pool (in the baseline, not in Δ).",
        "",
        t1,
        "",
        f"Where the extra time and memory of each method go, in percent of `nnUNetTrainerMeanTeacher` "
        f"(targets: contrastive machinery ≤ {TARGET_TIME:.0%} time, ≤ {TARGET_MEMORY:.0%} peak memory). "
        f"\"Extra teacher pass\" = `MeanTeacher_teacherSeesLabeled` minus `MeanTeacher` (mandated by methods whose "
        f"contrast needs the teacher's view of the labeled images); \"contrastive machinery\" = the method minus "
        f"that reference (heads, losses, sampling, queues, banks).",
        "",
        t2,
    ]
    if report.get("failures"):
        lines += ["", "**Failed measurements** (see `logs/workers.log`): "
                  + ", ".join(f"`{f['label']}` (rep {f['rep'] + 1})" for f in report["failures"])]
    if t3:
        lines += ["", "Where the time of one step goes (median seconds per step; forward work of each part, measured "
                      "with wrappers around the trainer's methods; `backward + step` = the rest of `train_step`: "
                      "backward, clipping, optimizer; loss parts: the largest terms inside `losses`).", "", t3]
    return "\n".join(lines)


#: loss parts shown in the breakdown table (names of trainer methods)
LOSS_PARTS = ("supervised_loss", "pseudo_label_loss", "consistency_loss", "global_distillation", "local_distillation",
              "representation", "teacher_representation", "anatomical_contrast", "saacl", "tailness", "consistency",
              "diversity")


def format_breakdown_table(rows: List[dict]) -> str:
    out = []
    for r in rows:
        b = r.get("breakdown")
        if not b:
            continue
        parts = sorted(((b[k], k) for k in LOSS_PARTS if b.get(k)), reverse=True)[:4]
        out.append([f"`{_short(r['label'])}`", r["phase"] or "-", fmt(r["step_s"]), fmt(b.get("teacher_forward")),
                    fmt(b.get("student_forward")), fmt(b.get("aug_and_other_prepare")), fmt(b.get("compute_losses")),
                    fmt(b.get("backward_and_step")), fmt(b.get("after_optimizer_step")),
                    ", ".join(f"{k} {v:.3f}" for v, k in parts) or "-"])
    if not out:
        return ""
    return markdown_table(["trainer", "phase", "step", "teacher fwd", "student fwd", "aug + other", "losses",
                           "backward + step", "EMA", "loss parts"], out, "llrrrrrrrl")


# ------------------------------------------------------------------------------------------------
# worker (subprocess: imports torch and nnU-Net)
# ------------------------------------------------------------------------------------------------
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


def _variant_class(name: str):
    """Benchmark-only trainer variants (not registered with nnU-Net)."""
    if name == MT_TEACHER_LABELED:
        from nnunet_semicl.training.mean_teacher import nnUNetTrainerMeanTeacher

        class nnUNetTrainerMeanTeacher_teacherSeesLabeled(nnUNetTrainerMeanTeacher):
            """Mean teacher whose teacher forward also takes the labeled batch (as ACTION++/MONA/ARCO)."""

            def teacher_sees_labeled(self) -> bool:
                return True

        return nnUNetTrainerMeanTeacher_teacherSeesLabeled
    return None


def _build_trainer(spec: dict, name: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json as bg_load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    device = torch.device(spec["device"])
    if name.endswith(COMPILED):   # benchmark-only: the trainer with torch.compile allowed (the check of issue 13)
        trainer = _build_trainer(spec, name[: -len(COMPILED)])
        trainer.allow_compile = True
        return trainer
    cls = _variant_class(name)
    if cls is None:
        return get_trainer_from_args(str(spec["dataset_name"]), spec["configuration"], 0, name, spec["plans"],
                                     device=device)
    base = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(spec["dataset_name"]))
    plans = bg_load_json(join(base, spec["plans"] + ".json"))
    plans["continue_training"] = False  # as get_trainer_from_args sets it
    return cls(plans=plans, configuration=spec["configuration"], fold=0,
               dataset_json=bg_load_json(join(base, "dataset.json")), device=device)


def choose_epoch(trainer, phase: Optional[str]) -> int:
    """An epoch in the middle of ``phase`` (fine-tuning by default) of a (multi-phase) trainer."""
    n = int(trainer.num_epochs)
    if not hasattr(trainer, "phase_starts"):
        if phase not in (None, "finetune"):
            raise SystemExit(f"{type(trainer).__name__} has no '{phase}' phase")
        return n // 2
    e_local, e_fine = trainer.phase_starts()
    spans = {"global": (0, e_local), "local": (e_local, e_fine), "finetune": (e_fine, n)}
    lo, hi = spans[phase or "finetune"]
    if hi <= lo:
        raise SystemExit(f"{type(trainer).__name__} has no '{phase}' phase (phase starts {e_local}, {e_fine} of {n})")
    return (lo + hi) // 2


def fill_state_buffers(trainer) -> int:
    """Fill every ring buffer of the trainer's state (queues, memory banks, NN pool) to capacity with random unit
    vectors (and random class labels): the steady state of a long run. Returns the bytes of state buffers.

    Only RingBuffer's public interface: ``reset()`` (empty, next write at position 0), then ``push`` in chunks."""
    import torch
    import torch.nn.functional as F
    from nnunet_semicl.modules.queues import RingBuffer

    state = getattr(trainer, "state_modules", None)
    if state is None:
        return 0
    k = trainer.label_manager.num_segmentation_heads
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for m in state.modules():
            if not isinstance(m, RingBuffer):
                continue
            m.reset()
            for start in range(0, m.size, 4096):  # chunks: no temporary copy of a whole bank
                n = min(m.size, start + 4096) - start
                x = F.normalize(torch.randn((n, *m.item_shape), generator=g), dim=-1).to(m.items.device)
                labels = torch.randint(0, k, (n,), generator=g).to(m.labels.device) if m.with_labels else None
                m.push(x, labels)
    return sum(b.numel() * b.element_size() for b in state.buffers())


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
    trainer = _build_trainer(spec, spec["entry"])
    trainer.on_train_start()
    _seed(1)
    labeled = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)
    keep = lambda b, keys: {k: b[k] for k in keys if k in b}
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
    trainer = _build_trainer(spec, name)
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

    fixed = torch.load(spec["batch_file"], weights_only=False)
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="nnunet_semicl benchmark step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))
