"""Summary and markdown of ``nnunet_semicl benchmark step`` (pure: no torch, no nnU-Net)."""
from typing import Dict, List, Optional

from nnunet_semicl.benchmarking.common import fmt, fmt_pct, format_machine, markdown_table, median, ratio
from nnunet_semicl.benchmarking.step_trainers import MEAN_TEACHER, METHODS, MT_TEACHER_LABELED, STOCK

TARGET_TIME = 0.10    # contrastive machinery: at most +10% of the mean-teacher step time
TARGET_MEMORY = 0.15  # ... and at most +15% of its peak memory


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


def _trainer_label(label: str) -> str:
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
        out.append([f"`{_trainer_label(r['label'])}`", r["phase"] or "-", fmt(r["step_s"]), fmt(b.get("teacher_forward")),
                    fmt(b.get("student_forward")), fmt(b.get("aug_and_other_prepare")), fmt(b.get("compute_losses")),
                    fmt(b.get("backward_and_step")), fmt(b.get("after_optimizer_step")),
                    ", ".join(f"{k} {v:.3f}" for v, k in parts) or "-"])
    if not out:
        return ""
    return markdown_table(["trainer", "phase", "step", "teacher fwd", "student fwd", "aug + other", "losses",
                           "backward + step", "EMA", "loss parts"], out, "llrrrrrrrl")
