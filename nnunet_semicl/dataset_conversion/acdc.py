"""ACDC (MICCAI 2017) -> nnU-Net raw dataset ``Dataset027_ACDC`` with the papers' protocol built in.

Usage::

    nnunet_semicl convert-acdc -i /data/ACDC            # official release or SSL4MIS HDF5 copy
    python -m nnunet_semicl.dataset_conversion.acdc -i /data/ACDC_ssl4mis --spacing 10 1.5 1.5

Inputs (detected automatically, or ``--layout``):

* **official**: ``training/patientXXX/`` (and ``testing/``) with ``patientXXX_frameYY.nii.gz``,
  ``patientXXX_frameYY_gt.nii.gz`` and ``Info.cfg`` (whose ``ED:``/``ES:`` lines give the two
  annotated frame numbers). Geometry is taken from the files. nnU-Net's own
  ``Dataset027_ACDC.py`` is not used (it crashes in 2.8.1).
* **ssl4mis**: ``data/patientXXX_frameYY.h5`` volumes (Z, H, W) and/or 2D training slices
  ``data/patientXXX_frameYY_slice_N.h5`` (N = 1..K, stacked back in slice order); keys ``image`` and
  ``label``. No spacing is stored, so ``--spacing`` (z, y, x) mm is assumed, default (10, 1.5, 1.5):
  ACDC's typical slice spacing and in-plane resolution. Only mm metrics depend on it.

Case ids are the SSL4MIS names for both inputs: ``patientXXX_frame01`` = end-diastole (ED),
``patientXXX_frame02`` = end-systole (ES); for official input the real frame numbers (from
``Info.cfg``) are recorded in ``conversion_info.json``. Labels as nnU-Net's own conversion: 0
background, 1 RV, 2 MLV (myocardium), 3 LVC (LV cavity).

Protocol (``protocols.ACDC``): 70 training and 10 validation patients -> ``imagesTr``/``labelsTr``,
20 test patients -> ``imagesTs`` with labels in ``labelsTs``. ``splits_final.json`` fold 0 is the
70/10 split; ``splits_semicl_{1pct,5pct,10pct}.json`` label 1 / 3 / 7 patients. ``--cv`` makes a
5-fold cross-validation over the 80 non-test patients instead. The official ``testing/`` patients
(101-150) are not part of the protocol and are not converted.
"""
import argparse
import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.dataset_conversion.common import (ConversionError, Staging, Timer, check_dataset_id_free,
                                                     cli_error, command_line, default_num_processes, log,
                                                     make_dataset_dirs, make_task_paths, next_steps,
                                                     note_stale_preprocessing, output_roots, plan_split_files,
                                                     run_tasks, short_list, write_json, write_split_files)
from nnunet_semicl.dataset_conversion.protocols import ACDC, ACDC_FRAMES, Protocol, make_folds, make_settings

DEFAULT_ID = 27
DEFAULT_NAME = "ACDC"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
ALLOWED_LABELS = (0, 1, 2, 3)
#: (z, y, x) mm assumed for the SSL4MIS HDF5 copy, which stores no spacing
DEFAULT_SSL4MIS_SPACING = (10.0, 1.5, 1.5)
LABEL_HINT = ("ACDC labels are 0 background, 1 RV, 2 myocardium, 3 LV cavity; is this an ACDC ground-truth file?")
_SLICE_RE = re.compile(r"^(patient\d+_frame\d+)_slice_(\d+)\.h5$")


# ------------------------------------------------------------------------------------------------
# layout detection
# ------------------------------------------------------------------------------------------------
def _official_dirs(root: str) -> List[str]:
    cands = [os.path.join(root, "training"), os.path.join(root, "testing"), os.path.join(root, "database", "training"),
             os.path.join(root, "database", "testing"), root]
    return [c for c in cands if os.path.isdir(c) and glob.glob(os.path.join(c, "patient[0-9]*", "Info.cfg"))]


def _h5_dirs(root: str) -> List[str]:
    cands = [os.path.join(root, "data"), os.path.join(root, "data", "slices"), root]
    return [c for c in cands if os.path.isdir(c) and glob.glob(os.path.join(c, "patient*.h5"))]


def detect_layout(root: str) -> str:
    if not os.path.isdir(root):
        raise ConversionError(f"Input folder {root} does not exist.")
    if _official_dirs(root):
        return "official"
    if _h5_dirs(root):
        return "ssl4mis"
    raise ConversionError(f"No ACDC data found in {root}: expected the official release (training/patientXXX/ with "
                          f"Info.cfg and patientXXX_frameYY[_gt].nii.gz) or the SSL4MIS HDF5 copy "
                          f"(data/patientXXX_frameYY.h5 or data/patientXXX_frameYY_slice_N.h5). Point -i at the "
                          f"folder that contains training/ or data/.")


# ------------------------------------------------------------------------------------------------
# official release
# ------------------------------------------------------------------------------------------------
def parse_info_cfg(path: str) -> Dict[str, int]:
    """``ED`` and ``ES`` frame numbers from an ACDC ``Info.cfg`` (lines ``KEY: value``)."""
    if not os.path.isfile(path):
        raise ConversionError(f"Missing {path}: ACDC's Info.cfg says which frames are ED and ES. Re-extract the "
                              f"patient folder from the official release.")
    out = {}
    with open(path) as f:
        for line in f:
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.strip()
    try:
        ed, es = int(float(out["ED"])), int(float(out["ES"]))
    except (KeyError, ValueError):
        raise ConversionError(f"{path} has no valid 'ED: <frame>' and 'ES: <frame>' lines (found keys "
                              f"{sorted(out)}). Re-extract it from the official release.") from None
    if ed == es:
        raise ConversionError(f"{path}: ED and ES are the same frame ({ed}).")
    return {"ED": ed, "ES": es}


def locate_official(root: str, cases: Sequence[str]) -> Tuple[Dict[str, dict], List[str]]:
    """Source files per case id, and the case ids whose patient folder is absent."""
    dirs = _official_dirs(root)
    found, missing, problems = {}, [], []
    frames = dict(ACDC_FRAMES)
    for case in cases:
        patient, suffix = case[:len("patient000")], case[len("patient000"):]
        pdir = next((os.path.join(d, patient) for d in dirs if os.path.isdir(os.path.join(d, patient))), None)
        if pdir is None:
            missing.append(case)
            continue
        try:
            info = parse_info_cfg(os.path.join(pdir, "Info.cfg"))
        except ConversionError as e:
            problems.append(str(e))
            continue
        phase = frames[suffix]
        frame = info[phase]
        image = os.path.join(pdir, f"{patient}_frame{frame:02d}.nii.gz")
        label = os.path.join(pdir, f"{patient}_frame{frame:02d}_gt.nii.gz")
        if not os.path.isfile(image):
            problems.append(f"{case}: missing image {image} (Info.cfg says {phase} is frame {frame}).")
        elif not os.path.isfile(label):
            problems.append(f"{case}: missing ground truth {label} for {phase} frame {frame}. Every protocol case "
                            f"needs its _gt file; restore it from the official release.")
        else:
            found[case] = {"kind": "sitk", "image": image, "label": label, "phase": phase, "source_frame": frame}
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {root}: " + " | ".join(problems[:8])
                              + (f" | ... (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
    return found, missing


# ------------------------------------------------------------------------------------------------
# SSL4MIS HDF5 copy
# ------------------------------------------------------------------------------------------------
def _read_list(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip().replace(".h5", "") for line in f if line.strip()]


def locate_ssl4mis(root: str, cases: Sequence[str]) -> Tuple[Dict[str, dict], List[str]]:
    dirs = _h5_dirs(root)
    volumes: Dict[str, str] = {}
    slices: Dict[str, Dict[int, str]] = {}
    for d in dirs:
        for p in sorted(glob.glob(os.path.join(d, "patient*.h5"))):
            name = os.path.basename(p)
            m = _SLICE_RE.match(name)
            if m:
                slices.setdefault(m.group(1), {}).setdefault(int(m.group(2)), p)
            elif re.match(r"^patient\d+_frame\d+\.h5$", name):
                volumes.setdefault(name[:-3], p)
    listed: Dict[str, List[int]] = {}
    slice_list = os.path.join(root, "train_slices.list")
    if os.path.isfile(slice_list):
        for entry in _read_list(slice_list):
            m = _SLICE_RE.match(entry + ".h5")
            if m:
                listed.setdefault(m.group(1), []).append(int(m.group(2)))
    found, missing, problems = {}, [], []
    frames = dict(ACDC_FRAMES)
    for case in cases:
        phase = frames[case[len("patient000"):]]
        if case in volumes:
            found[case] = {"kind": "h5", "file": volumes[case], "axes": "zyx", "phase": phase}
            continue
        if case not in slices:
            if case in listed:
                problems.append(f"{case}: train_slices.list lists {len(listed[case])} slices but none of the "
                                f"files {case}_slice_N.h5 is in {short_list(dirs, 3)}.")
            else:
                missing.append(case)
            continue
        nums = sorted(slices[case])
        absent_listed = sorted(set(listed.get(case, [])) - set(nums))
        gaps = sorted(set(range(1, nums[-1] + 1)) - set(nums))
        if absent_listed:
            problems.append(f"{case}: slices {short_list([f'slice_{n}' for n in absent_listed])} are listed in "
                            f"{slice_list} but absent; restore those files.")
        elif gaps:
            gap_files = short_list([f"{case}_slice_{n}.h5" for n in gaps])
            problems.append(f"{case}: the slice series has a gap, missing {gap_files} "
                            f"(found slices {short_list([str(n) for n in nums], 20)}). A frame is stacked from "
                            f"slices 1..N in order; restore the missing file(s).")
        else:
            found[case] = {"kind": "h5_slices", "files": [slices[case][n] for n in nums], "phase": phase}
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {root}: " + " | ".join(problems[:8])
                              + (f" | ... (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
    return found, missing


def compare_input_lists(root: str, protocol: Protocol, verbose: bool) -> List[str]:
    """Warn when the input's own ``*.list`` files disagree with the built-in protocol (which is used)."""
    notes = []
    for fname, groups in (("train.list", protocol.train), ("val.list", protocol.val), ("test.list", protocol.test)):
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            continue
        listed = set(_read_list(path))
        expected = set(protocol.cases_of(groups))
        if listed != expected:
            notes.append(f"{path} differs from the built-in protocol ({len(listed - expected)} extra, "
                         f"{len(expected - listed)} absent ids); the built-in lists (methods.md 7.1) are used.")
    for n in notes:
        log(f"WARNING: {n}", verbose)
    return notes


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def convert_acdc(input_dir: str, raw: Optional[str] = None, preprocessed: Optional[str] = None,
                 dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME, layout: str = "auto",
                 spacing: Optional[Sequence[float]] = None, cv_folds: Optional[int] = None,
                 allow_missing: bool = False, num_processes: int = 1, overwrite: bool = False,
                 verbose: bool = True, protocol: Protocol = ACDC, created_by: str = "") -> dict:
    """Convert ACDC; return a summary (dataset folder, case counts, split files, skipped settings)."""
    timer = Timer()
    protocol.check()
    raw_root, prep_root = output_roots(raw, preprocessed)
    input_dir = os.path.abspath(input_dir)
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    check_dataset_id_free(dataset_name, [raw_root, prep_root, os.environ.get("nnUNet_results")])
    if os.path.exists(os.path.join(raw_root, dataset_name)) and not overwrite:
        raise FileExistsError(f"{os.path.join(raw_root, dataset_name)} already exists. Pass --overwrite to replace it "
                              f"(then run nnUNetv2_plan_and_preprocess again), or choose another --id.")
    if layout == "auto":
        layout = detect_layout(input_dir)
    if layout not in ("official", "ssl4mis"):
        raise ConversionError(f"Unknown layout '{layout}' (use official, ssl4mis or auto).")
    if layout == "official" and spacing is not None:
        log("NOTE: --spacing is ignored for the official release (its files carry their geometry).", verbose)
    spacing = tuple(float(s) for s in (spacing or DEFAULT_SSL4MIS_SPACING))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConversionError(f"--spacing needs three positive values (z y x, mm), got {spacing}.")

    cases = protocol.cases_of(protocol.all_groups)
    locate = locate_official if layout == "official" else locate_ssl4mis
    found, missing = locate(input_dir, cases)
    notes = compare_input_lists(input_dir, protocol, verbose) if layout == "ssl4mis" else []
    if missing and not allow_missing:
        by_role = {r: [c for c in missing if protocol.role_of(protocol.group_of(c)) == r]
                   for r in ("train", "val", "test")}
        detail = "; ".join(f"{r}: {short_list(v)}" for r, v in by_role.items() if v)
        raise ConversionError(f"{len(missing)} case(s) of the protocol are not in {input_dir} ({detail}). Supply the "
                              f"complete dataset, or pass --allow-missing to convert the cases that are present (the "
                              f"split files then cover only those; settings whose labeled patients are absent are "
                              f"skipped).")
    if missing:
        log(f"WARNING: {len(missing)} protocol case(s) absent from the input and left out (--allow-missing): "
            f"{short_list(missing)}", verbose)

    present = [c for c in cases if c in found]
    folds = make_folds(protocol, present, cv_folds)
    settings, skipped = make_settings(protocol, folds, cv=cv_folds is not None, created_by=created_by)
    for s, why in skipped:
        log(f"WARNING: setting '{s}' skipped: {why}", verbose)
    prep_base = os.path.join(prep_root, dataset_name)
    plan_split_files(prep_base, folds, settings, overwrite, skipped=[n for n, _ in skipped])

    roles = {c: protocol.role_of(protocol.group_of(c)) for c in present}
    n_test = sum(r == "test" for r in roles.values())
    with Staging(raw_root, dataset_name, overwrite) as stage:
        make_dataset_dirs(stage, with_test=n_test > 0)
        tasks = []
        for c in present:
            t = dict(found[c], case=c, allowed=ALLOWED_LABELS, hint=LABEL_HINT, spacing=spacing,
                     **make_task_paths(stage, c, roles[c]))
            tasks.append(t)
        log(f"Converting {len(tasks)} ACDC cases ({layout} layout) from {input_dir} with {num_processes} "
            f"process(es)", verbose)
        results = run_tasks(tasks, num_processes, "ACDC", verbose)
        n_train = len(present) - n_test
        dataset_json = {
            "channel_names": {"0": "cineMRI"},
            "labels": LABELS,
            "numTraining": n_train,
            "file_ending": ".nii.gz",
            "name": name,
            "description": "ACDC cine-MRI, ED and ES frames as separate cases (patientXXX_frame01 = ED, _frame02 = "
                           "ES); converted by nnunet_semicl with the SSL4MIS 70/10/20 protocol.",
            "reference": "Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
                         "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11), 2018",
            "licence": "ACDC terms of use: non-commercial research use; cite the reference above "
                       "(https://www.creatis.insa-lyon.fr/Challenge/acdc/)",
        }
        write_json(dataset_json, os.path.join(stage, "dataset.json"))
        by_case = {r["case"]: r for r in results}
        info = {
            "converter": "nnunet_semicl.dataset_conversion.acdc",
            "created_by": created_by,
            "input": input_dir,
            "layout": layout,
            "spacing_zyx_mm": list(spacing) if layout == "ssl4mis" else "from the image files",
            "spacing_note": ("assumed: the SSL4MIS HDF5 files store no spacing" if layout == "ssl4mis" else ""),
            "case_naming": "patientXXX_frame01 = ED, patientXXX_frame02 = ES",
            "protocol": protocol.name, "protocol_source": protocol.source,
            "cv_folds": cv_folds, "allow_missing": allow_missing, "missing_cases": missing,
            "skipped_settings": dict(skipped), "list_file_notes": notes,
            "cases": {c: {"role": roles[c], "phase": found[c]["phase"],
                          **({"source_frame": found[c]["source_frame"]} if "source_frame" in found[c] else {}),
                          "shape_zyx": by_case[c]["shape"], "source": by_case[c]["source"]} for c in present},
        }
        write_json(info, os.path.join(stage, "conversion_info.json"))
    split_paths = write_split_files(prep_base, folds, settings, overwrite, skipped=[n for n, _ in skipped])
    note_stale_preprocessing(prep_base, overwrite, verbose)
    summary = {"dataset_name": dataset_name, "dataset_dir": os.path.join(raw_root, dataset_name),
               "layout": layout, "n_train_cases": n_train, "n_test_cases": n_test,
               "n_fold0_train": len(folds[0]["train"]), "n_fold0_val": len(folds[0]["val"]), "n_folds": len(folds),
               "missing": missing, "settings": [s["setting"] for s in settings], "skipped_settings": dict(skipped),
               "split_files": split_paths, "seconds": timer.seconds}
    log(f"Wrote {summary['dataset_dir']}: {n_train} training cases (fold 0: {summary['n_fold0_train']} train / "
        f"{summary['n_fold0_val']} val), {n_test} test cases in imagesTs/labelsTs, settings "
        f"{summary['settings']} in {prep_base} ({summary['seconds']:.1f} s).", verbose)
    log(next_steps(int(dataset_id), dataset_name, "2d 3d_fullres", summary["settings"]), verbose)
    return summary


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-i", "--input", required=True, help="official ACDC folder (with training/) or SSL4MIS copy "
                                                        "(with data/ and the *.list files)")
    p.add_argument("--id", type=int, default=DEFAULT_ID, help=f"dataset id (default {DEFAULT_ID})")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"dataset name (default {DEFAULT_NAME})")
    p.add_argument("--layout", choices=("auto", "official", "ssl4mis"), default="auto")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel spacing in mm assumed for the SSL4MIS HDF5 files (default 10 1.5 1.5)")
    p.add_argument("--cv", type=int, nargs="?", const=5, default=None, metavar="K",
                   help="nnU-Net-style K-fold cross-validation (default K=5) over the 80 non-test patients instead "
                        "of the benchmark's single train/val split; settings are made per fold")
    p.add_argument("--allow-missing", action="store_true",
                   help="convert the protocol cases that are present and leave out absent ones (default: error)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset and its split files")
    p.add_argument("--raw", default=None, help="raw root (default $nnUNet_raw)")
    p.add_argument("--preprocessed", default=None, help="preprocessed root for the split files "
                                                        "(default $nnUNet_preprocessed)")
    p.add_argument("-q", "--quiet", action="store_true")


def run(args) -> None:
    created_by = command_line()
    try:
        convert_acdc(args.input, args.raw, args.preprocessed, args.id, args.name, args.layout, args.spacing,
                            args.cv, args.allow_missing, args.np, args.overwrite, not args.quiet,
                            created_by=created_by)
    except (ConversionError, FileExistsError) as e:
        cli_error("convert-acdc", e)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnunet_semicl.dataset_conversion.acdc")
    add_arguments(p)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
