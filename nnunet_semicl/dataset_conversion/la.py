"""LA (2018 Atrial Segmentation Challenge) -> nnU-Net raw dataset ``Dataset028_LA``, papers' protocol built in.

Usage::

    nnunet_semicl convert-la -i "/data/2018 Atrial Segmentation Challenge/Training Set"
    python -m nnunet_semicl.dataset_conversion.la -i /data/LA_uamt            # UA-MT HDF5 copy

Inputs (detected automatically, or ``--layout``); the case folders ``<ID>/`` may sit in the input
folder itself or one level below (e.g. ``2018LA_Seg_Training Set/<ID>/``):

* **challenge**: ``<ID>/lgemri.nrrd`` (LGE-MRI) and ``<ID>/laendo.nrrd`` (0 / 255 = left atrium
  cavity). The image geometry (spacing, origin, direction) is kept; the label is written on the
  image's grid as 0 / 1.
* **uamt**: ``<ID>/mri_norm2.h5`` (UA-MT / SSL4MIS copy: cropped around the atrium, z-scored
  intensities), keys ``image``/``label`` in (X, Y, Z) order, no spacing stored: ``--spacing``
  (default 0.625 mm isotropic, the challenge's resolution).

Case ids are the challenge ids. Label 1 = left atrium.

Protocol (``protocols.LA``): the UA-MT 80 training / 20 test volumes; the test volumes go to
``imagesTs`` with labels in ``labelsTs``. The protocol has no validation set (and selecting on the
test set is not allowed), so ``splits_final.json`` fold 0 validates on 8 of the 80 training volumes
(``protocols.LA_VAL``) and trains on the other 72; nnU-Net's fold ``all`` trains on all 80, exactly
the papers' training set. ``splits_semicl_{1pct,5pct,10pct}.json`` label 1 / 4 / 8 volumes.
``--cv`` makes a 5-fold cross-validation over the 80 training volumes instead.
"""
import argparse
import os
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.dataset_conversion.common import (ConversionError, Staging, Timer, check_dataset_id_free,
                                                     cli_error, command_line, default_num_processes, log,
                                                     make_dataset_dirs, make_task_paths, next_steps,
                                                     note_stale_preprocessing, output_roots, plan_split_files,
                                                     run_tasks, short_list, write_json, write_split_files)
from nnunet_semicl.dataset_conversion.protocols import LA, Protocol, make_folds, make_settings

DEFAULT_ID = 28
DEFAULT_NAME = "LA"
LABELS = {"background": 0, "left_atrium": 1}
#: UA-MT's mri_norm2.h5 stores no spacing; the challenge data are 0.625 mm isotropic
DEFAULT_UAMT_SPACING = (0.625, 0.625, 0.625)
IMAGE_NRRD, LABEL_NRRD, UAMT_H5 = "lgemri.nrrd", "laendo.nrrd", "mri_norm2.h5"


def _case_roots(root: str) -> List[str]:
    """The input folder and its immediate subfolders (``Training Set``, ``2018LA_Seg_Training Set``, ...)."""
    if not os.path.isdir(root):
        raise ConversionError(f"Input folder {root} does not exist.")
    subs = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return [root] + subs


def _case_dir(roots: Sequence[str], case: str) -> Optional[str]:
    return next((os.path.join(r, case) for r in roots if os.path.isdir(os.path.join(r, case))), None)


def detect_layout(root: str, cases: Sequence[str]) -> str:
    roots = _case_roots(root)
    n_nrrd = n_h5 = 0
    for r in roots:
        for d in os.listdir(r):
            p = os.path.join(r, d)
            if os.path.isdir(p):
                n_nrrd += os.path.isfile(os.path.join(p, IMAGE_NRRD))
                n_h5 += os.path.isfile(os.path.join(p, UAMT_H5))
    if n_nrrd:
        return "challenge"
    if n_h5:
        return "uamt"
    raise ConversionError(f"No LA data found in {root}: expected case folders <ID>/ with {IMAGE_NRRD} and {LABEL_NRRD} "
                          f"(challenge release) or {UAMT_H5} (UA-MT copy), in the input folder or one level below "
                          f"(e.g. '2018LA_Seg_Training Set/<ID>/').")


def locate(root: str, cases: Sequence[str], layout: str) -> Tuple[Dict[str, dict], List[str]]:
    roots = _case_roots(root)
    found, missing, problems = {}, [], []
    for case in cases:
        d = _case_dir(roots, case)
        if d is None:
            missing.append(case)
            continue
        if layout == "challenge":
            image, label = os.path.join(d, IMAGE_NRRD), os.path.join(d, LABEL_NRRD)
            if not os.path.isfile(image):
                problems.append(f"{case}: missing image {image}.")
            elif not os.path.isfile(label):
                problems.append(f"{case}: missing ground truth {label}. Every protocol volume needs its "
                                f"{LABEL_NRRD}; restore it from the challenge release.")
            else:
                found[case] = {"kind": "sitk", "image": image, "label": label, "label_map": {255: 1},
                               "allowed": (0, 255),
                               "hint": f"The challenge's {LABEL_NRRD} holds 0 (background) and 255 (left atrium)."}
        else:
            h5 = os.path.join(d, UAMT_H5)
            if not os.path.isfile(h5):
                problems.append(f"{case}: missing {h5} (the folder exists but holds {sorted(os.listdir(d))}).")
            else:
                found[case] = {"kind": "h5", "file": h5, "axes": "xyz", "allowed": (0, 1),
                               "hint": "UA-MT's mri_norm2.h5 labels hold 0 (background) and 1 (left atrium)."}
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {root}: " + " | ".join(problems[:8])
                              + (f" | ... (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
    return found, missing


def compare_input_lists(root: str, protocol: Protocol, verbose: bool) -> List[str]:
    notes = []
    for fname, groups in (("train.list", protocol.train + protocol.val), ("test.list", protocol.test)):
        path = os.path.join(root, fname)
        if os.path.isfile(path):
            with open(path) as f:
                listed = {line.strip() for line in f if line.strip()}
            if listed != set(groups):
                notes.append(f"{path} differs from the built-in protocol ({len(listed - set(groups))} extra, "
                             f"{len(set(groups) - listed)} absent ids); the built-in lists (methods.md 7.2) are used.")
    for n in notes:
        log(f"WARNING: {n}", verbose)
    return notes


def convert_la(input_dir: str, raw: Optional[str] = None, preprocessed: Optional[str] = None,
               dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME, layout: str = "auto",
               spacing: Optional[Sequence[float]] = None, cv_folds: Optional[int] = None,
               allow_missing: bool = False, num_processes: int = 1, overwrite: bool = False,
               verbose: bool = True, protocol: Protocol = LA, created_by: str = "") -> dict:
    """Convert LA; return a summary (dataset folder, case counts, split files, skipped settings)."""
    timer = Timer()
    protocol.check()
    raw_root, prep_root = output_roots(raw, preprocessed)
    input_dir = os.path.abspath(input_dir)
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    check_dataset_id_free(dataset_name, [raw_root, prep_root, os.environ.get("nnUNet_results")])
    if os.path.exists(os.path.join(raw_root, dataset_name)) and not overwrite:
        raise FileExistsError(f"{os.path.join(raw_root, dataset_name)} already exists. Pass --overwrite to replace it "
                              f"(then run nnUNetv2_plan_and_preprocess again), or choose another --id.")
    cases = protocol.cases_of(protocol.all_groups)
    if layout == "auto":
        layout = detect_layout(input_dir, cases)
    if layout not in ("challenge", "uamt"):
        raise ConversionError(f"Unknown layout '{layout}' (use challenge, uamt or auto).")
    if layout == "challenge" and spacing is not None:
        log("NOTE: --spacing is ignored for the challenge release (its files carry their geometry).", verbose)
    spacing = tuple(float(s) for s in (spacing or DEFAULT_UAMT_SPACING))
    if len(spacing) == 1:
        spacing = spacing * 3
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConversionError(f"--spacing needs one or three positive values (z y x, mm), got {spacing}.")

    found, missing = locate(input_dir, cases, layout)
    notes = compare_input_lists(input_dir, protocol, verbose)
    if missing and not allow_missing:
        by_role = {r: [c for c in missing if protocol.role_of(c) == r] for r in ("train", "val", "test")}
        detail = "; ".join(f"{r}: {short_list(v)}" for r, v in by_role.items() if v)
        raise ConversionError(f"{len(missing)} volume(s) of the protocol are not in {input_dir} ({detail}). Supply the "
                              f"complete dataset, or pass --allow-missing to convert the volumes that are present "
                              f"(the split files then cover only those; settings whose labeled volumes are absent "
                              f"are skipped).")
    if missing:
        log(f"WARNING: {len(missing)} protocol volume(s) absent from the input and left out (--allow-missing): "
            f"{short_list(missing)}", verbose)

    present = [c for c in cases if c in found]
    folds = make_folds(protocol, present, cv_folds)
    settings, skipped = make_settings(protocol, folds, cv=cv_folds is not None, created_by=created_by)
    for s, why in skipped:
        log(f"WARNING: setting '{s}' skipped: {why}", verbose)
    prep_base = os.path.join(prep_root, dataset_name)
    plan_split_files(prep_base, folds, settings, overwrite, skipped=[n for n, _ in skipped])

    roles = {c: protocol.role_of(c) for c in present}
    n_test = sum(r == "test" for r in roles.values())
    with Staging(raw_root, dataset_name, overwrite) as stage:
        make_dataset_dirs(stage, with_test=n_test > 0)
        tasks = [dict(found[c], case=c, spacing=spacing, **make_task_paths(stage, c, roles[c])) for c in present]
        log(f"Converting {len(tasks)} LA volumes ({layout} layout) from {input_dir} with {num_processes} "
            f"process(es)", verbose)
        results = run_tasks(tasks, num_processes, "LA", verbose)
        n_train = len(present) - n_test
        dataset_json = {
            "channel_names": {"0": "MRI"},
            "labels": LABELS,
            "numTraining": n_train,
            "file_ending": ".nii.gz",
            "name": name,
            "description": "2018 Atrial Segmentation Challenge LGE-MRI, left atrium cavity; converted by "
                           "nnunet_semicl with the UA-MT 80/20 protocol"
                           + (" from the UA-MT mri_norm2.h5 copy (cropped, z-scored)" if layout == "uamt" else ""),
            "reference": "Xiong et al., A global benchmark of algorithms for segmenting the left atrium from late "
                         "gadolinium-enhanced cardiac MR, Medical Image Analysis 67, 2021; Yu et al., UA-MT, "
                         "MICCAI 2019",
            "licence": "2018 Atrial Segmentation Challenge data terms: research use; cite the references above",
        }
        write_json(dataset_json, os.path.join(stage, "dataset.json"))
        by_case = {r["case"]: r for r in results}
        info = {
            "converter": "nnunet_semicl.dataset_conversion.la",
            "created_by": created_by,
            "input": input_dir,
            "layout": layout,
            "spacing_zyx_mm": list(spacing) if layout == "uamt" else "from the image files",
            "spacing_note": ("assumed: mri_norm2.h5 stores no spacing" if layout == "uamt" else ""),
            "protocol": protocol.name, "protocol_source": protocol.source,
            "validation_note": "fold 0 validates on protocols.LA_VAL (8 training volumes); fold 'all' = all 80",
            "cv_folds": cv_folds, "allow_missing": allow_missing, "missing_cases": missing,
            "skipped_settings": dict(skipped), "list_file_notes": notes,
            "cases": {c: {"role": roles[c], "shape_zyx": by_case[c]["shape"], "source": by_case[c]["source"]}
                      for c in present},
        }
        write_json(info, os.path.join(stage, "conversion_info.json"))
    split_paths = write_split_files(prep_base, folds, settings, overwrite, skipped=[n for n, _ in skipped])
    note_stale_preprocessing(prep_base, overwrite, verbose)
    summary = {"dataset_name": dataset_name, "dataset_dir": os.path.join(raw_root, dataset_name),
               "layout": layout, "n_train_cases": n_train, "n_test_cases": n_test,
               "n_fold0_train": len(folds[0]["train"]), "n_fold0_val": len(folds[0]["val"]), "n_folds": len(folds),
               "missing": missing, "settings": [s["setting"] for s in settings], "skipped_settings": dict(skipped),
               "split_files": split_paths, "seconds": timer.seconds}
    log(f"Wrote {summary['dataset_dir']}: {n_train} training volumes (fold 0: {summary['n_fold0_train']} train / "
        f"{summary['n_fold0_val']} val), {n_test} test volumes in imagesTs/labelsTs, settings "
        f"{summary['settings']} in {prep_base} ({summary['seconds']:.1f} s).", verbose)
    log(next_steps(int(dataset_id), dataset_name, "3d_fullres", summary["settings"]), verbose)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-i", "--input", required=True, help="folder with the <ID>/ case folders (or one level above)")
    p.add_argument("--id", type=int, default=DEFAULT_ID, help=f"dataset id (default {DEFAULT_ID})")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"dataset name (default {DEFAULT_NAME})")
    p.add_argument("--layout", choices=("auto", "challenge", "uamt"), default="auto")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="spacing in mm assumed for mri_norm2.h5: one value (isotropic) or Z Y X (default 0.625)")
    p.add_argument("--cv", type=int, nargs="?", const=5, default=None, metavar="K",
                   help="nnU-Net-style K-fold cross-validation (default K=5) over the 80 training volumes instead "
                        "of fold 0 = 72 train / 8 validation; settings are made per fold")
    p.add_argument("--allow-missing", action="store_true",
                   help="convert the protocol volumes that are present and leave out absent ones (default: error)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset and its split files")
    p.add_argument("--raw", default=None, help="raw root (default $nnUNet_raw)")
    p.add_argument("--preprocessed", default=None, help="preprocessed root for the split files "
                                                        "(default $nnUNet_preprocessed)")
    p.add_argument("-q", "--quiet", action="store_true")


def run(args) -> None:
    try:
        convert_la(args.input, args.raw, args.preprocessed, args.id, args.name, args.layout, args.spacing,
                          args.cv, args.allow_missing, args.np, args.overwrite, not args.quiet,
                          created_by=command_line())
    except (ConversionError, FileExistsError) as e:
        cli_error("convert-la", e)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnunet_semicl.dataset_conversion.la")
    add_arguments(p)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
