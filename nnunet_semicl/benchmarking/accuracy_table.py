"""The table of ``nnunet_semicl benchmark accuracy``: nnU-Net's validation summary of each run, the rows'
means over runs, the paired differences to the reference rows (by seed and validation volume) and the
markdown. Pure: no torch or nnU-Net import.
"""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from nnunet_semicl.benchmarking.accuracy_datasets import ACDC, dataset_of
from nnunet_semicl.benchmarking.accuracy_runs import WARM_ROW, WARM_TRAINER
from nnunet_semicl.benchmarking.common import fmt, format_machine, markdown_table
from nnunet_semicl.files import load_json
from nnunet_semicl.seeding import SEED_ENV

#: ACDC's classes (label value, column); a dataset's own: ``accuracy_datasets.DATASETS[...].classes``
CLASSES = ACDC.classes
#: the surface distances of a dataset with ``surface_metrics`` (key of nnunet_semicl.evaluation, column), in mm
SURFACE_METRICS = (("hd95_mm", "HD95"), ("asd_mm", "ASD"))
#: the rows every other row is compared with, paired by seed and validation volume
REFERENCE_ROWS = ("nnUNetTrainerLabeledOnly", "nnUNetTrainerPseudoLabel")


def average_runs(rows: list, classes: Sequence = CLASSES) -> dict:
    """One table row from a trainer's runs of one setting: the mean of each value, and every run's row."""
    out = {}
    for key in [name for _, name in classes] + ["mean"] + [c for _, c in SURFACE_METRICS] + ["s_per_it", "wall_s"]:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    out["runs"] = rows
    return out


def read_summary(path: str, classes: Sequence = CLASSES) -> dict:
    """Per-class (``classes``: label value, column) and mean foreground Dice from nnU-Net's validation/summary.json,
    and each validation case's foreground-mean Dice (``per_case``, by reference file name; for the paired
    statistics)."""
    s = load_json(path)
    out = {name: s["mean"].get(k, {}).get("Dice") for k, name in classes}
    out["mean"] = s["foreground_mean"]["Dice"]
    cases = s.get("metric_per_case", [])
    out["n_cases"] = len(cases)
    out["per_case"] = {validation_case_name(c, i): d for i, c in enumerate(cases)
                       for d in [case_foreground_dice(c)] if d is not None}
    return out


def read_surface_metrics(validation: str, gt_folder: str, dataset_json: str, classes: Sequence = CLASSES) -> dict:
    """HD95 and ASD in mm (``nnunet_semicl.evaluation``: medpy, the papers' definitions) of every prediction in
    nnU-Net's ``validation`` folder against its reference in ``gt_folder`` (the preprocessed folder's
    ``gt_segmentations``), averaged over the foreground classes: the means over volumes and ``surface_per_case``.
    Computed once into ``validation/summary_semicl.json`` (and its .md), read from there afterwards."""
    out = os.path.join(validation, "summary_semicl.json")
    if not os.path.isfile(out):
        import tempfile

        from nnunet_semicl.evaluation import evaluate_folders

        ending = load_json(dataset_json).get("file_ending", ".nii.gz")
        with tempfile.TemporaryDirectory() as references:   # the validation volumes' references only
            for name in os.listdir(validation):
                if name.endswith(ending):
                    os.symlink(os.path.join(gt_folder, name), os.path.join(references, name))
            evaluate_folders(validation, references, labels=[int(k) for k, _ in classes], dataset_json=dataset_json,
                             output=out, verbose=False)
    result = load_json(out)
    row = {column: result["average"][key]["mean"] for key, column in SURFACE_METRICS}
    row["surface_per_case"] = {case: {column: _class_mean([m[key] for m in metrics.values()])
                                      for key, column in SURFACE_METRICS}
                               for case, metrics in result["per_case"].items()}
    return row


def _class_mean(values: Sequence) -> Optional[float]:
    """The mean of the defined values (evaluation writes an undefined distance as null)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


def validation_case_name(case: dict, index: int) -> str:
    reference = case.get("reference_file")
    return os.path.basename(reference) if reference else f"case{index}"


def case_foreground_dice(case: dict) -> Optional[float]:
    """One case's mean Dice over the foreground classes (every class nnU-Net scored: its summary holds the foreground
    ones); a class nnU-Net scores NaN (absent from both the reference and the prediction) is left out; None
    without any score."""
    metrics = case.get("metrics", {})
    values = [m["Dice"] for m in metrics.values() if m.get("Dice") is not None]
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


def paired_difference(runs: Sequence[dict], reference_runs: Sequence[dict]) -> Optional[dict]:
    """A row's runs against a reference row's, paired by ``pair_key`` (the seed) and validation case.

    ``per_seed``: each pair's difference of mean Dice; ``mean``: their average; ``se``: the standard error
    over volumes and seeds = standard deviation (n - 1) of all paired per-case differences (the same case's
    foreground-mean Dice in the two runs of one seed) / sqrt(n); ``better``: how many of the n are > 0.
    None unless both rows have runs with the same pair keys and a mean for each."""
    mine, theirs = ({r.get("pair_key", f"run{i + 1}"): r for i, r in enumerate(rs)} for rs in (runs, reference_runs))
    if not mine or set(mine) != set(theirs) or any(r.get("mean") is None for r in [*mine.values(), *theirs.values()]):
        return None
    per_seed = {k: mine[k]["mean"] - theirs[k]["mean"] for k in mine}
    cases = [mine[k]["per_case"][c] - theirs[k]["per_case"][c] for k in mine
             for c in mine[k].get("per_case", {}) if c in theirs[k].get("per_case", {})]
    return {"mean": sum(per_seed.values()) / len(per_seed), "per_seed": per_seed,
            "se": standard_error(cases), "n": len(cases), "better": sum(1 for d in cases if d > 0)}


def standard_error(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n - 1) / sqrt(n); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def add_paired_differences(results: Dict[str, Dict[str, dict]]) -> None:
    """``results[row][setting]["paired"][reference]``: :func:`paired_difference` against each reference row
    (:data:`REFERENCE_ROWS`) of the same setting that exists, the row itself and the warm start excepted."""
    for row, per_setting in results.items():
        for setting, result in per_setting.items():
            result["paired"] = {ref: paired_difference(result["runs"], results[ref][setting]["runs"])
                                for ref in REFERENCE_ROWS
                                if ref != row and row != WARM_ROW and setting in results.get(ref, {})}


def row_label(row: str, variants: Dict[str, dict]) -> str:
    """A table row's first cell: the trainer, the warm start or a variant with its trainer and keys."""
    if row == WARM_ROW:
        return f"{row} (`{WARM_TRAINER}`)"
    if row in variants:
        keys = ", ".join(f"{k}={json.dumps(v)}" for k, v in variants[row]["overrides"].items())
        return f"`{row}` (`{variants[row]['trainer']}`, {keys})"
    return f"`{row}`"


def per_run_means(runs: Sequence[dict]) -> str:
    """The ``runs`` cell: each run's mean (after its seed ``s<seed>`` with ``--seeds``), or the number of runs."""
    seeded = [x.get("pair_key", "").startswith("s") for x in runs]
    if len(runs) <= 1 and not any(seeded):
        return str(len(runs))
    return ", ".join((f"{x['pair_key']} " if s else "") + fmt(x.get("mean")) for x, s in zip(runs, seeded))


def paired_cell(paired: Optional[dict]) -> str:
    """``+0.012 ± 0.005 (30/40 better; s1 +0.008, s2 +0.016)``; '-' without a pairing."""
    if not paired:
        return "-"
    per_seed = ", ".join(f"{k} {d:+.3f}" for k, d in paired["per_seed"].items())
    se = f" ± {paired['se']:.3f}" if paired.get("se") is not None else ""
    return f"{paired['mean']:+.3f}{se} ({paired['better']}/{paired['n']} better; {per_seed})"


def reference_name(row: str) -> str:
    return row.replace("nnUNetTrainer", "", 1)


def paired_legend(options: dict, references: Sequence[str]) -> List[str]:
    """The legend of the paired-difference columns (none without a reference row)."""
    if not references:
        return []
    seeds = options.get("seeds")
    return ["- Paired differences (`Δ` columns: the row minus the reference row, in Dice): runs paired by seed "
            "(`--seeds`, `s<seed>`; without it run k with run k), shown only when both rows have the same seeds: "
            "the difference of the means averaged over seeds, ± its standard error over volumes and seeds = the "
            "standard deviation (n - 1) of all n paired per-volume differences (a validation volume's "
            "foreground-mean Dice in the two runs of one seed) / sqrt(n); then on how many of the n volumes the "
            "row is better, and each seed's difference."
            + (f" Seeds: {', '.join(map(str, seeds))} (`{SEED_ENV}`)." if seeds else "")]


def format_accuracy_markdown(report: dict) -> str:
    o = report["options"]
    ds = dataset_of(o)
    columns = [name for _, name in ds.classes] + ["mean"] + ([c for _, c in SURFACE_METRICS] if ds.surface_metrics
                                                             else [])
    labeled = dict(ds.labeled)
    settings = o["settings"]
    variants = o.get("variants") or {}
    references = [ref for ref in REFERENCE_ROWS if ref in report["results"]]
    surface = {c for _, c in SURFACE_METRICS}
    headers = ["trainer"]
    for s in settings:
        n = labeled.get(s)
        tag = f"{s} ({n} {ds.unit})" if n else s
        headers += ([f"{tag} {columns[0]}"] + columns[1:] + ["runs"]
                    + [f"Δ {reference_name(ref)}" for ref in references])
    headers += ["s/it", "train min"]
    rows = []
    for trainer, per in report["results"].items():
        cells = [row_label(trainer, variants)]
        silent = sum(1 for r in per.values() if r for x in r.get("runs") or [] if x.get("unsupervised_terms_ran") is False)
        if silent:   # such a run trained as LabeledOnly would
            cells[0] += f" (**{silent} run(s) whose unsupervised terms never ran**)"
        for s in settings:
            r = per.get(s)
            cells += ([fmt(r.get(k), 2 if k in surface else 3) for k in columns] + [per_run_means(r.get("runs") or [])]
                      + [paired_cell((r.get("paired") or {}).get(ref)) for ref in references]
                      if r else ["-"] * (len(columns) + 1 + len(references)))
        cells.append(" / ".join(fmt(per[s].get("s_per_it"), 2) if per.get(s) else "-" for s in settings))
        cells.append(" / ".join(fmt(per[s]["wall_s"] / 60.0, 1) if per.get(s) and per[s].get("wall_s") else "-"
                                for s in settings))
        rows.append(cells)
    c = report["configuration"]
    table = markdown_table(headers, rows, "l" + "r" * (len(headers) - 1))
    return "\n".join([
        f"Measured {report['machine'].get('date')} with `{report['command']}`"
        + (" (**smoke run: not a measurement**)" if o.get("smoke") else "") + f"; {report['wall_s'] / 60:.0f} min in all.",
        "",
        f"- Machine: {format_machine(report['machine'])}.",
        f"- {ds.source_text}; configuration `{o['configuration']}` inherited from "
        f"`{ds.parent}`: spacing {c['spacing']} mm, patch {c['patch_size']}, batch {c['batch_size']} labeled (+ "
        f"{c['batch_size']} unlabeled), U-Net widths {report['architecture']}; {o['epochs']} epochs x "
        f"{o['iterations']} iterations ({o['val_iterations']} validation iterations), trainers' default "
        f"hyperparameters and phase fractions" + (" (a variant: with the keys in its row)" if variants else "")
        + (f", initial learning rate {o['lr']}" if o.get("lr") else "") + ".",
        (f"- Start: per setting, a supervised warm start (`{WARM_TRAINER}`, {o['warm_epochs']} x "
         f"{o['warm_iterations']} iterations on the setting's labeled cases, nnU-Net's learning rate; row "
         f"`{WARM_ROW}`); then every trainer, the labeled-only baseline included, trains as `<trainer>_warmStart`: "
         f"the trainer unchanged, its network starting from all weights of the warm start (heads, queues and the "
         f"optimizer fresh; the EMA teacher a copy of the student). Differences to the warm-start row are what "
         f"the short schedule of each loss did."
         if o.get("warm_epochs") else "- Start: every trainer from scratch (no warm start)."),
        f"- Dice: nnU-Net's final validation of fold 0 = {ds.validation_text}, "
        "`fold_0/validation/summary.json` (mean over cases), averaged over a trainer's runs (`runs`: each run's mean, "
        "or the number of runs); `s/it`: median epoch duration (its validation iterations included) per training "
        "iteration; `train min`: wall time of `nnUNetv2_train` including the final validation."
        + (" `HD95`, `ASD`: mm, medpy (`nnunet_semicl.evaluation`: 95th percentile of the symmetric surface "
           "distances; mean distance from the prediction's surface to the reference's) per validation volume, "
           "mean over volumes (`fold_0/validation/summary_semicl.json`)." if ds.surface_metrics else ""),
        *paired_legend(o, references),
        "",
        table,
    ])
