"""Paper-style evaluation of a prediction folder: Dice, Jaccard, HD95 and ASD per case and class.

Usage::

    nnunet_semicl evaluate -d 27 -p PREDICTIONS                 # reference = $nnUNet_raw/Dataset027_ACDC/labelsTs
    nnunet_semicl evaluate -r labelsTs -p PREDICTIONS -o results/acdc_5pct.json --name "ACTION++ 5%"

Metrics (spec ``methods.md`` 2.7 and 7.3; definitions in ``docs/evaluation.md``), per foreground
class of every reference case, from ``medpy.metric.binary`` (what the papers' code uses, so the
HD95 / ASD definitions are the papers'):

* ``dice`` = ``dc``, ``jaccard`` = ``jc``;
* ``hd95`` = 95th percentile of the pooled surface distances in both directions (``hd95``);
* ``asd`` = mean distance from the *prediction*'s surface voxels to the reference surface (``asd``,
  directed, as medpy defines it and the papers report it);
* each distance in mm (reference spacing) and in voxels (spacing 1, the papers' "ASD [voxel]").

Empty masks (no silent skipping), ``--empty`` selects the convention:

* ``nan`` (default): reference and prediction both non-empty -> medpy. Exactly one empty -> Dice =
  Jaccard = 0, HD95 / ASD undefined (NaN). Both empty -> all four undefined (NaN; the class is absent
  from the case, as in nnU-Net's own evaluation). Means skip NaN and every mean reports how many
  values were undefined.
* ``ssl4mis``: as the SSL4MIS-derived test scripts: an empty prediction (or, where those scripts
  would crash, an empty reference) scores 0 for all four metrics. It makes missed structures look
  good in HD95 / ASD; use it only to reproduce published numbers.

Output: a JSON file (per case, per class, averaged; NaN written as null) and a markdown file with
the papers' table layout (``| Avg | RV | Myo | LV |`` cells ``DSC/ASD``), a table of all metrics and a
per-case table. "Avg" is the mean over classes of the per-class means.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.argtypes import non_negative_int, positive_int
from nnunet_semicl.errors import EvaluationError, InputError
from nnunet_semicl.files import find_training_summary, incomplete_file_problem, load_json, save_json
from nnunet_semicl.evaluation_report import METRICS, markdown_report, paper_table
from nnunet_semicl.launch import exit_2_on, module_main  # CLI shape shared with convert-*

CONVENTIONS = ("nan", "ssl4mis")
METRIC_DEFINITIONS = {
    "dice": "medpy.metric.binary.dc: 2|P∩R| / (|P| + |R|)",
    "jaccard": "medpy.metric.binary.jc: |P∩R| / |P∪R|",
    "hd95": "medpy.metric.binary.hd95: 95th percentile of the surface distances P->R and R->P pooled",
    "asd": "medpy.metric.binary.asd: mean distance from the surface voxels of P to the surface of R (directed)",
    "units": "_mm: with the reference image's voxel spacing; _voxel: spacing 1 (the papers' 'ASD [voxel]')",
    "surface": "surface voxels = mask minus its erosion with connectivity 1 (medpy's default)",
}


# ------------------------------------------------------------------------------------------------
# metrics on one pair of binary masks
# ------------------------------------------------------------------------------------------------
def crop_to_union(pred, ref, margin: int = 1):
    """Crop both masks to the bounding box of their union plus ``margin`` voxels (clipped to the array).

    Exact for medpy's surface distances: every surface voxel lies inside the box, the one-voxel margin
    keeps the erosion identical, and the nearest surface voxel of the other mask is inside the box.
    It makes distance transforms of small structures in large volumes cheap.
    """
    import numpy as np

    union = pred | ref
    if not union.any():
        return pred, ref
    sl = []
    for ax in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != ax)
        idx = np.flatnonzero(union.any(axis=other))
        sl.append(slice(max(0, idx[0] - margin), min(union.shape[ax], idx[-1] + 1 + margin)))
    sl = tuple(sl)
    return pred[sl], ref[sl]


def binary_metrics(pred, ref, spacing: Optional[Sequence[float]] = None, convention: str = "nan") -> Dict[str, float]:
    """Dice, Jaccard, HD95 and ASD (mm and voxel) of boolean masks ``pred`` and ``ref`` (any rank)."""
    import numpy as np
    from medpy.metric import binary

    if convention not in CONVENTIONS:
        raise EvaluationError(f"Unknown empty-mask convention '{convention}' (use {CONVENTIONS}).")
    pred = np.asarray(pred).astype(bool)
    ref = np.asarray(ref).astype(bool)
    if pred.shape != ref.shape:
        raise EvaluationError(f"Prediction shape {pred.shape} differs from reference shape {ref.shape}.")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * pred.ndim
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    nan = float("nan")
    if n_pred == 0 or n_ref == 0:
        if convention == "ssl4mis":
            out = dict.fromkeys(METRICS, 0.0)
        elif n_pred == 0 and n_ref == 0:
            out = dict.fromkeys(METRICS, nan)
        else:
            out = dict.fromkeys(METRICS, nan)
            out["dice"] = out["jaccard"] = 0.0
    else:
        p, r = crop_to_union(pred, ref)
        out = {"dice": float(binary.dc(p, r)), "jaccard": float(binary.jc(p, r)),
               "hd95_mm": float(binary.hd95(p, r, voxelspacing=spacing)),
               "asd_mm": float(binary.asd(p, r, voxelspacing=spacing)),
               "hd95_voxel": float(binary.hd95(p, r)), "asd_voxel": float(binary.asd(p, r))}
    out["n_pred"], out["n_ref"] = n_pred, n_ref
    return out


# ------------------------------------------------------------------------------------------------
# one case
# ------------------------------------------------------------------------------------------------
def _read(path: str):
    import SimpleITK as sitk

    problem = incomplete_file_problem(path)
    if problem:
        raise EvaluationError(f"{path}: {problem}. The file is truncated or damaged (an interrupted prediction or "
                              f"copy?); predict or copy it again.")
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"Cannot read {path} ({str(e).strip().splitlines()[-1]}).") from None
    return img


def evaluate_case(pred_file: str, ref_file: str, labels: Sequence[int], convention: str = "nan") -> dict:
    """Metrics of every label for one case; the prediction must lie on the reference grid."""
    import numpy as np
    import SimpleITK as sitk

    pred_img, ref_img = _read(pred_file), _read(ref_file)
    warnings = []
    if pred_img.GetSize() != ref_img.GetSize():
        raise EvaluationError(f"{pred_file}: size {pred_img.GetSize()} differs from the reference {ref_file} "
                              f"({ref_img.GetSize()}). Predictions must be on the reference image's grid "
                              f"(nnUNetv2_predict writes them so); did you predict the right images?")
    if not np.allclose(pred_img.GetSpacing(), ref_img.GetSpacing(), rtol=1e-3):
        raise EvaluationError(f"{pred_file}: spacing {pred_img.GetSpacing()} differs from the reference {ref_file} "
                              f"({ref_img.GetSpacing()}); mm distances would be wrong. Predict from the images "
                              f"that belong to these labels.")
    if not (np.allclose(pred_img.GetOrigin(), ref_img.GetOrigin(), atol=1e-2)
            and np.allclose(pred_img.GetDirection(), ref_img.GetDirection(), atol=1e-3)):
        warnings.append(f"{os.path.basename(pred_file)}: origin/direction differ from the reference (arrays are "
                        f"compared voxel by voxel)")
    pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
    check_label_map(pred, pred_file)
    spacing = ref_img.GetSpacing()[::-1]
    out = {str(lab): binary_metrics(pred == lab, ref == lab, spacing, convention) for lab in labels}
    found = sorted(int(v) for v in np.unique(pred).tolist())
    extra_pred = sorted(set(found) - set(labels) - {0})
    if extra_pred:
        warnings.append(f"{os.path.basename(pred_file)}: prediction has labels {extra_pred} that are not evaluated")
    return {"metrics": out, "warnings": warnings, "spacing_zyx": [float(s) for s in spacing], "pred_labels": found}


def check_label_map(pred, pred_file: str) -> None:
    """A prediction must hold whole label values: soft or probability values (e.g. labels + 0.4) would compare
    unequal to every label and change the figures silently."""
    import numpy as np

    if np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool:
        return
    bad = ~np.isfinite(pred) | (np.round(pred) != pred)
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(pred[bad])[:3])
        raise EvaluationError(f"{pred_file} holds non-integer values ({examples}; {int(bad.sum())} voxels): a "
                              f"prediction must be a label map (whole label values, as nnUNetv2_predict writes). "
                              f"Convert probabilities or soft outputs to labels (argmax) before evaluating.")


def _evaluate_case_star(args):
    try:
        return True, evaluate_case(*args)
    except EvaluationError as e:
        return False, str(e)


# ------------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------------
def _stats(values: List[float]) -> dict:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    ok = arr[~np.isnan(arr)]
    return {"mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "n": int(ok.size), "n_undefined": int(arr.size - ok.size)}


def aggregate(per_case: Dict[str, Dict[str, dict]], labels: Sequence[int]) -> Tuple[dict, dict]:
    """Per-class statistics over cases, and the average over classes.

    The average's ``mean`` is the mean of the per-class means (the papers' "Avg"); its ``std`` is the
    std over cases of each case's mean over its defined classes; ``n_undefined`` sums the classes'.
    """
    import numpy as np

    cases = sorted(per_case)
    per_class = {str(l): {m: _stats([per_case[c][str(l)][m] for c in cases]) for m in METRICS} for l in labels}
    average = {}
    for m in METRICS:
        class_means = [per_class[str(l)][m]["mean"] for l in labels]
        defined = [v for v in class_means if not np.isnan(v)]
        case_means = []
        for c in cases:
            vals = [per_case[c][str(l)][m] for l in labels if not np.isnan(per_case[c][str(l)][m])]
            case_means.append(float(np.mean(vals)) if vals else float("nan"))
        st = _stats(case_means)
        average[m] = {"mean": float(np.mean(defined)) if defined else float("nan"), "std": st["std"],
                      "n_classes": len(defined),
                      "n_undefined": int(sum(per_class[str(l)][m]["n_undefined"] for l in labels))}
    return per_class, average


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------
def _labels_from_dataset_json(path: str) -> Dict[int, str]:
    dj = load_json(path)
    out = {}
    for name, value in dj.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            raise EvaluationError(f"{path} defines region-based labels ('{name}': {value}); this evaluation handles "
                                  f"plain label maps only. Pass --labels explicitly.")
        if name == "ignore" or int(value) == 0:
            continue
        out[int(value)] = name
    return dict(sorted(out.items()))


def _all_label_values(dj: dict) -> Optional[set]:
    """Every value dataset.json's labels give (background and ignore included); None for region-based labels."""
    values = set()
    for value in (dj.get("labels") or {}).values():
        if isinstance(value, (list, tuple)):
            return None
        values.add(int(value))
    return values or None


def _find_dataset_json(candidates: Sequence[Optional[str]]) -> Optional[str]:
    for c in candidates:
        if c and os.path.isfile(c):
            return c
    return None


def evaluate_folders(pred_dir: str, ref_dir: str, labels: Optional[Sequence[int]] = None,
                     label_names: Optional[Dict[int, str]] = None, dataset_json: Optional[str] = None,
                     file_ending: Optional[str] = None, convention: str = "nan", num_processes: int = 1,
                     output: Optional[str] = None, method_name: Optional[str] = None, verbose: bool = True,
                     model_folder: Optional[str] = None) -> dict:
    """Evaluate every reference case; write ``output`` (JSON) and the markdown beside it; return the result.

    The trainer's training summary (whether its unsupervised terms ever ran) is read from ``model_folder``
    (a fold's results folder), else from the prediction folder's parent (nnU-Net's ``fold_X/validation``),
    printed and recorded."""
    import numpy as np

    if convention not in CONVENTIONS:
        raise EvaluationError(f"Unknown empty-mask convention '{convention}' (use {CONVENTIONS}).")
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not os.path.isdir(d):
            raise EvaluationError(f"The {what} folder {d} does not exist.")
    dj_path = _find_dataset_json([dataset_json, os.path.join(os.path.dirname(os.path.abspath(ref_dir)), "dataset.json"),
                                  os.path.join(pred_dir, "dataset.json")])
    dj = load_json(dj_path) if dj_path else {}
    file_ending = file_ending or dj.get("file_ending", ".nii.gz")
    refs = sorted(f[:-len(file_ending)] for f in os.listdir(ref_dir) if f.endswith(file_ending))
    if not refs:
        raise EvaluationError(f"No reference files ending in '{file_ending}' in {ref_dir}.")
    preds = {f[:-len(file_ending)] for f in os.listdir(pred_dir) if f.endswith(file_ending)}
    missing = [c for c in refs if c not in preds]
    if missing:
        raise EvaluationError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}. Predict every test "
                              f"case (a missing case is never skipped silently).")
    ignored = sorted(preds - set(refs))

    names: Dict[int, str] = {}
    if dj_path and dj.get("labels"):
        names = _labels_from_dataset_json(dj_path)
    if label_names:
        names.update({int(k): v for k, v in label_names.items()})
    if labels is None:
        labels = sorted(names)
        if not labels:  # no dataset.json: every foreground value found in the references
            import SimpleITK as sitk

            found = set()
            for c in refs:
                found |= set(np.unique(sitk.GetArrayFromImage(_read(os.path.join(ref_dir, c + file_ending)))).tolist())
            labels = sorted(int(v) for v in found if v != 0)
    labels = [int(l) for l in labels]
    if not labels:
        raise EvaluationError("No foreground labels to evaluate; pass --labels.")
    dataset_values = _all_label_values(dj) if dj_path else None
    if dataset_values is not None:
        unknown = sorted(set(labels) - dataset_values)
        if unknown:
            defined = ", ".join(f"{v} {n}" for v, n in sorted(names.items()))
            raise EvaluationError(f"--labels {' '.join(map(str, unknown))}: not a label of {dj_path} (its foreground "
                                  f"labels: {defined}). Evaluate labels the dataset defines, or pass the matching "
                                  f"--dataset-json.")
    names = {l: names.get(l, str(l)) for l in labels}

    jobs = [(os.path.join(pred_dir, c + file_ending), os.path.join(ref_dir, c + file_ending), labels, convention)
            for c in refs]
    from tqdm import tqdm

    results = []
    if num_processes > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            for ok, res in tqdm(pool.imap(_evaluate_case_star, jobs), total=len(jobs), desc="evaluate",
                                disable=not verbose, file=sys.stdout):
                if not ok:
                    pool.terminate()
                    raise EvaluationError(res)
                results.append(res)
    else:
        for j in tqdm(jobs, desc="evaluate", disable=not verbose, file=sys.stdout):
            results.append(evaluate_case(*j))
    per_case = {c: r["metrics"] for c, r in zip(refs, results)}
    per_class, average = aggregate(per_case, labels)
    warnings = [w for r in results for w in r["warnings"]]
    if dataset_values is not None:
        foreign = {c: sorted(set(r["pred_labels"]) - dataset_values) for c, r in zip(refs, results)}
        foreign = {c: v for c, v in foreign.items() if v}
        if foreign:
            values = sorted({v for vs in foreign.values() for v in vs})
            warnings.insert(0, f"predictions of {len(foreign)} case(s) ({', '.join(list(foreign)[:5])}"
                               f"{' ...' if len(foreign) > 5 else ''}) hold label(s) {values} that {dj_path} does not "
                               f"define: predicted with another dataset's model? They are not evaluated.")
    for w in warnings[:5]:
        print(f"WARNING: {w}", file=sys.stderr)
    if len(warnings) > 5:
        print(f"WARNING: ... {len(warnings) - 5} more warning(s) in the output JSON", file=sys.stderr)
    result = {
        "prediction_folder": os.path.abspath(pred_dir), "reference_folder": os.path.abspath(ref_dir),
        "dataset_json": dj_path, "file_ending": file_ending, "method": method_name or os.path.basename(
            os.path.normpath(pred_dir)),
        "labels": {str(l): names[l] for l in labels}, "convention": convention,
        "library": _medpy_version(), "metric_definitions": METRIC_DEFINITIONS,
        "n_cases": len(refs), "ignored_predictions": ignored, "warnings": warnings,
        "per_case": per_case, "per_class": per_class, "average": average,
        "training": find_training_summary(model_folder, os.path.dirname(os.path.abspath(pred_dir))),
    }
    if output is None:
        output = os.path.join(pred_dir, "summary_semicl.json")
    save_json(_nan_to_none(result), output)
    md_path = os.path.splitext(output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown_report(result))
    result["output_json"], result["output_markdown"] = output, md_path
    if verbose:
        print(paper_table(result))
        if result["training"]:
            print(f"Training ({result['training'].get('trainer')}): {result['training'].get('message')}")
        if ignored:
            print(f"NOTE: {len(ignored)} prediction(s) without reference were not evaluated: {', '.join(ignored[:8])}")
        print(f"Wrote {output} and {md_path}")
    return result


def _medpy_version() -> str:
    try:
        from importlib.metadata import version

        return f"medpy {version('medpy')} (medpy.metric.binary: dc, jc, hd95, asd)"
    except Exception:
        return "medpy (medpy.metric.binary: dc, jc, hd95, asd)"


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-p", "--pred", required=True, help="folder with the predicted label maps (<case><file_ending>)")
    p.add_argument("-r", "--ref", default=None, help="folder with the reference label maps (e.g. .../labelsTs)")
    p.add_argument("-d", "--dataset", default=None, help="dataset id or name: reference = $nnUNet_raw/<Dataset>/"
                                                         "labelsTs and label names from its dataset.json")
    p.add_argument("-o", "--output", default=None, help="output JSON (default PRED/summary_semicl.json); the "
                                                        "markdown goes beside it (.md)")
    p.add_argument("--labels", type=non_negative_int, nargs="+", default=None,
                   help="label values to evaluate (default: the "
                        "dataset.json labels)")
    p.add_argument("--dataset-json", default=None, help="dataset.json for label names and the file ending")
    p.add_argument("--file-ending", default=None, help="default: from dataset.json, else .nii.gz")
    p.add_argument("--empty", choices=CONVENTIONS, default="nan",
                   help="empty-mask convention (default nan; ssl4mis reproduces the papers' scripts)")
    p.add_argument("--name", default=None, help="method name for the table row (default: the prediction folder)")
    p.add_argument("-np", type=positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("-m", "--model", default=None, help="the fold's results folder (.../fold_0): its training summary "
                                                       "(did the unsupervised terms ever run?) is printed and recorded "
                                                       "(default: the prediction folder's parent, as for fold_0/validation)")
    p.add_argument("-q", "--quiet", action="store_true")


def run(args) -> None:
    ref, dataset_json = args.ref, args.dataset_json
    with exit_2_on("evaluate", InputError):
        if args.dataset is not None:
            from nnunet_semicl.data.dataset_lookup import resolve_dataset_name

            name = resolve_dataset_name(args.dataset, need_raw=True)
            base = os.path.join(os.environ["nnUNet_raw"], name)
            ref = ref or os.path.join(base, "labelsTs")
            dataset_json = dataset_json or os.path.join(base, "dataset.json")
        if ref is None:
            raise EvaluationError("Give the reference folder (-r .../labelsTs) or the dataset (-d 27).")
        evaluate_folders(args.pred, ref, labels=args.labels, dataset_json=dataset_json, file_ending=args.file_ending,
                         convention=args.empty, num_processes=args.np, output=args.output, method_name=args.name,
                         verbose=not args.quiet, model_folder=args.model)


def main(argv=None):
    module_main("python -m nnunet_semicl.evaluation", add_arguments, run, argv)


if __name__ == "__main__":
    main()
