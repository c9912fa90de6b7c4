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
import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.dataset_conversion.cases import raise_if_problems, read_id_list
from nnunet_semicl.dataset_conversion.converter_cli import ConverterCommand
from nnunet_semicl.dataset_conversion.pipeline import DatasetSpec, convert_dataset
from nnunet_semicl.dataset_conversion.protocols import ACDC, ACDC_FRAMES, Protocol
from nnunet_semicl.errors import ConversionError, short_list

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
    raise_if_problems(root, problems)
    return found, missing


# ------------------------------------------------------------------------------------------------
# SSL4MIS HDF5 copy
# ------------------------------------------------------------------------------------------------
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
        for entry in read_id_list(slice_list, drop=".h5"):
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
    raise_if_problems(root, problems)
    return found, missing


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def _dataset_text(layout: str) -> Dict[str, str]:
    """dataset.json texts (the same for both layouts)."""
    return {
        "description": "ACDC cine-MRI, ED and ES frames as separate cases (patientXXX_frame01 = ED, _frame02 = ES); "
                       "converted by nnunet_semicl with the SSL4MIS 70/10/20 protocol.",
        "reference": "Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
                     "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11), 2018",
        "licence": "ACDC terms of use: non-commercial research use; cite the reference above "
                   "(https://www.creatis.insa-lyon.fr/Challenge/acdc/)",
    }


SPEC = DatasetSpec(
    title="ACDC", module="nnunet_semicl.dataset_conversion.acdc", unit="case", labeled_units="patients",
    default_id=DEFAULT_ID, default_name=DEFAULT_NAME,
    locate={"official": locate_official, "ssl4mis": locate_ssl4mis}, detect_layout=detect_layout,
    hdf5_layout="ssl4mis", default_spacing=DEFAULT_SSL4MIS_SPACING, isotropic_spacing=False,
    spacing_note="assumed: the SSL4MIS HDF5 files store no spacing",
    channel_name="cineMRI", labels=LABELS, dataset_text=_dataset_text,
    # only the SSL4MIS copy has list files; their entries may name files (patientXXX_frameYY.h5)
    list_files=(("train.list", ("train",)), ("val.list", ("val",)), ("test.list", ("test",))),
    list_layouts=("ssl4mis",), list_entry_ending=".h5", methods_section="methods.md 7.1",
    next_steps_configs="2d 3d_fullres",
    task_defaults={"allowed": ALLOWED_LABELS, "hint": LABEL_HINT},  # one label check for both layouts
    case_info_keys=("phase", "source_frame"),
    info_after_spacing={"case_naming": "patientXXX_frame01 = ED, patientXXX_frame02 = ES"},
)


def convert_acdc(input_dir: str, raw: Optional[str] = None, preprocessed: Optional[str] = None,
                 dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME, layout: str = "auto",
                 spacing: Optional[Sequence[float]] = None, cv_folds: Optional[int] = None,
                 allow_missing: bool = False, num_processes: int = 1, overwrite: bool = False,
                 verbose: bool = True, protocol: Protocol = ACDC, created_by: str = "") -> dict:
    """Convert ACDC; return a summary (dataset folder, case counts, split files, skipped settings)."""
    return convert_dataset(SPEC, protocol, input_dir, raw, preprocessed, dataset_id, name, layout, spacing, cv_folds,
                           allow_missing, num_processes, overwrite, verbose, created_by)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
COMMAND = ConverterCommand(
    name="convert-acdc", spec=SPEC, convert=convert_acdc, description=__doc__,
    input_help="official ACDC folder (with training/) or SSL4MIS copy (with data/ and the *.list files)",
    spacing_help="voxel spacing in mm assumed for the SSL4MIS HDF5 files (default 10 1.5 1.5)",
    cv_help="nnU-Net-style K-fold cross-validation (default K=5) over the 80 non-test patients instead of the "
            "benchmark's single train/val split; settings are made per fold")
# the functions every nnunet_semicl sub-command module has (cli.EXTERNAL_COMMANDS), and python -m
add_arguments, run, main = COMMAND.add_arguments, COMMAND.run, COMMAND.main


if __name__ == "__main__":
    main()
