"""Shared machinery of the ACDC and LA converters.

* :class:`ConversionError`: every problem with the input, with a message that names the file or case
  and says how to fix it.
* :func:`convert_case`: the per-case worker (reads, checks and writes one image/label pair); the
  converters only build task dicts, so that the same checks apply to every input layout.
* :func:`run_tasks`: runs the workers in a ``spawn`` pool (``-np``) with a tqdm progress bar.
* :class:`Staging`: the dataset is written into a hidden folder beside the target and moved into
  place only when every case converted, so a failed conversion leaves nothing half-written.
* output folders, the ``--overwrite`` rule, dataset-id clashes, ``splits_final.json`` and the
  labeled-setting files (through :mod:`nnunet_semicl.data.splits`).
* :class:`DatasetSpec` and :func:`convert_dataset`: the one conversion pipeline; a converter module
  describes its dataset in a ``DatasetSpec`` (layouts and their locate functions, labels, texts).
* :func:`add_converter_arguments`, :func:`run_converter`, :func:`exit_2_on`, :func:`module_main`: the
  command lines (``nnunet_semicl convert-*`` and ``python -m``; ``evaluate`` shares the last two).

Heavy imports (numpy, SimpleITK, h5py, tqdm) happen inside functions: the command-line help must stay
fast.
"""
import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.launch import exit_2_on

if TYPE_CHECKING:  # protocols imports this module (ConversionError)
    from nnunet_semicl.dataset_conversion.protocols import Protocol

#: Tolerances for "same geometry" between an image and its label (mm, relative, direction cosines).
SPACING_RTOL = 1e-3
ORIGIN_ATOL = 1e-2
DIRECTION_ATOL = 1e-3


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file/case and the fix."""


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def default_num_processes() -> int:
    env = os.environ.get("nnUNet_def_n_proc")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return max(1, min(8, os.cpu_count() or 1))


def short_list(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def raise_if_problems(root: str, problems: Sequence[str]) -> None:
    """Report every problem a locate function found in ``root`` at once (the first 8), not one per run."""
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {root}: " + " | ".join(problems[:8])
                              + (f" | ... (+{len(problems) - 8} more)" if len(problems) > 8 else ""))


def log(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(msg, flush=True)


def output_roots(raw: Optional[str], preprocessed: Optional[str]) -> Tuple[str, str]:
    """``--raw`` / ``--preprocessed`` or the nnU-Net environment variables."""
    raw = raw or os.environ.get("nnUNet_raw")
    preprocessed = preprocessed or os.environ.get("nnUNet_preprocessed")
    missing = [n for n, v in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed)) if not v]
    if missing:
        raise ConversionError(f"Environment variable(s) {missing} not set (or pass --raw / --preprocessed). The raw "
                              f"dataset goes to $nnUNet_raw and the split files to $nnUNet_preprocessed/<Dataset>/, "
                              f"e.g. `export nnUNet_raw=/data/nnUNet_raw`.")
    return os.path.abspath(raw), os.path.abspath(preprocessed)


def check_dataset_id_free(dataset_name: str, roots: Sequence[Optional[str]]) -> None:
    """nnU-Net resolves ids by folder prefix: another ``DatasetXXX_*`` with our id would make it ambiguous."""
    prefix = dataset_name[:len("Dataset000")]
    clashes = []
    for r in roots:
        if r and os.path.isdir(r):
            clashes += [os.path.join(r, d) for d in os.listdir(r)
                        if d.startswith(prefix) and d != dataset_name and os.path.isdir(os.path.join(r, d))]
    if clashes:
        raise ConversionError(f"Dataset id {int(prefix[7:])} is already used by {short_list(clashes)}. nnU-Net "
                              f"needs ids to be unique: pass another --id, or remove that dataset.")


def find_existing(paths: Sequence[str]) -> List[str]:
    return [p for p in paths if os.path.exists(p)]


class Staging:
    """Write into ``<root>/.semicl_partial_<name>_<pid>``; move to ``<root>/<name>`` on success.

    A run killed with SIGKILL cannot remove its staging folder; the next run removes the ones whose
    process no longer exists (:func:`nnunet_semicl.data.files.remove_stale_partials`).
    """

    def __init__(self, root: str, name: str, overwrite: bool, verbose: bool = True):
        from nnunet_semicl.data.files import partial_folder

        self.root, self.name, self.overwrite, self.verbose = root, name, overwrite, verbose
        self.final = os.path.join(root, name)
        self.path = partial_folder(root, name)

    def __enter__(self) -> str:
        from nnunet_semicl.data.files import remove_stale_partials

        if os.path.exists(self.final) and not self.overwrite:
            raise FileExistsError(f"{self.final} already exists. Pass --overwrite to replace it (its preprocessed "
                                  f"data then need `nnUNetv2_plan_and_preprocess` again), or choose another --id.")
        os.makedirs(self.root, exist_ok=True)
        for stale in remove_stale_partials(self.root, self.name):
            log(f"Removed {stale}, left by an interrupted conversion.", self.verbose)
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.makedirs(self.path)
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        if os.path.exists(self.final):
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return False


def write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# reading and checking
# ------------------------------------------------------------------------------------------------
def read_sitk(path: str, what: str):
    import SimpleITK as sitk

    from nnunet_semicl.data.files import incomplete_file_problem

    if not os.path.isfile(path):
        raise ConversionError(f"Missing {what}: {path}")
    problem = incomplete_file_problem(path)
    if problem:
        raise ConversionError(f"{what} {path}: {problem}. The file is truncated or damaged; download it again.")
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"Cannot read {what} {path} ({str(e).strip().splitlines()[-1]}). The file is damaged "
                              f"or not an image; download it again.") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"{what} {path} must be a single-channel 3D image, got {img.GetDimension()}D with "
                              f"{img.GetNumberOfComponentsPerPixel()} component(s).")
    return img


def check_same_geometry(image, label, image_path: str, label_path: str) -> None:
    """Size, spacing, origin and direction of ``label`` must equal those of ``image`` (within tolerance)."""
    import numpy as np

    problems = []
    if image.GetSize() != label.GetSize():
        problems.append(f"size {label.GetSize()} vs image {image.GetSize()}")
    if not np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {label.GetSpacing()} vs image {image.GetSpacing()}")
    if not np.allclose(label.GetOrigin(), image.GetOrigin(), rtol=0, atol=ORIGIN_ATOL):
        problems.append(f"origin {label.GetOrigin()} vs image {image.GetOrigin()}")
    if not np.allclose(label.GetDirection(), image.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        problems.append(f"direction {label.GetDirection()} vs image {image.GetDirection()}")
    if problems:
        raise ConversionError(f"Label {label_path} does not match its image {image_path}: {'; '.join(problems)}. "
                              f"The label must lie on the image's voxel grid; check that the two files belong "
                              f"together (re-download them), or resample the label onto the image.")


def check_label_values(arr, allowed: Sequence[int], path: str, hint: str = "") -> None:
    import numpy as np

    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ConversionError(f"Label {path} has non-integer values; a label map must hold integer class ids "
                                  f"{list(allowed)}. {hint}".rstrip())
    values = np.unique(arr)
    bad = [v.item() for v in values if v not in set(allowed)]
    if bad:
        shown = str(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        raise ConversionError(f"Label {path} has unexpected values {shown} (allowed: {list(allowed)}). "
                              f"{hint}".rstrip())


def check_image_values(arr, path: str) -> None:
    import numpy as np

    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ConversionError(f"Image {path} contains NaN or infinite values; the file is damaged.")


def read_id_list(path: str, drop: str = "") -> List[str]:
    """The ids of a ``*.list`` file (one a line), with ``drop`` removed: SSL4MIS lists name files (``x.h5``)."""
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    return [i.replace(drop, "") for i in ids] if drop else ids


def read_h5_pair(path: str, ndim: int):
    """``image`` and ``label`` arrays of an SSL4MIS / UA-MT HDF5 file, checked for presence, rank and shape."""
    import h5py

    if not os.path.isfile(path):
        raise ConversionError(f"Missing file: {path}")
    try:
        with h5py.File(path, "r") as f:
            keys = sorted(f.keys())
            if "image" not in f or "label" not in f:
                raise ConversionError(f"{path} must contain the datasets 'image' and 'label', found {keys}. Only "
                                      f"labeled SSL4MIS / UA-MT files can be converted.")
            image, label = f["image"][()], f["label"][()]
    except OSError as e:
        raise ConversionError(f"Cannot read {path} as HDF5 ({e}); the file is damaged, download it again.") from None
    if image.ndim != ndim or label.ndim != ndim:
        raise ConversionError(f"{path}: expected {ndim}D 'image' and 'label', got shapes {image.shape} and "
                              f"{label.shape}.")
    if image.shape != label.shape:
        raise ConversionError(f"{path}: image shape {image.shape} and label shape {label.shape} differ; the file "
                              f"is inconsistent (re-create or re-download it).")
    return image, label


# ------------------------------------------------------------------------------------------------
# the per-case worker
# ------------------------------------------------------------------------------------------------
def _map_labels(label, label_map: Optional[Dict[int, int]]):
    import numpy as np

    out = label.astype(np.uint8) if label.dtype != np.uint8 else label
    if label_map:
        out = out.copy()
        for src, dst in label_map.items():
            out[label == src] = dst
    return out


def _from_array(arr, spacing_zyx):
    import numpy as np
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def convert_case(task: dict) -> dict:
    """Read, check and write one case. ``task['kind']`` is one of

    * ``"sitk"``: ``image`` and ``label`` files with geometry (NIfTI, NRRD); the label is written on the
      image's grid after the geometry check.
    * ``"h5"``: one HDF5 file with 3D ``image``/``label``; ``axes`` is ``"zyx"`` (SSL4MIS) or ``"xyz"``
      (UA-MT); ``spacing`` is (z, y, x) mm.
    * ``"h5_slices"``: ordered 2D HDF5 slices stacked along z.

    Common keys: ``case``, ``out_image``, ``out_label``, ``allowed`` (label values), ``label_map``
    (``{source: target}``), ``hint`` (appended to label-value errors).
    """
    import numpy as np
    import SimpleITK as sitk

    kind = task["kind"]
    allowed, hint = task["allowed"], task.get("hint", "")
    label_map = {int(k): int(v) for k, v in (task.get("label_map") or {}).items()}
    if kind == "sitk":
        img = read_sitk(task["image"], "image")
        lab = read_sitk(task["label"], "ground truth")
        check_same_geometry(img, lab, task["image"], task["label"])
        arr_lab = sitk.GetArrayFromImage(lab)
        check_label_values(arr_lab, allowed, task["label"], hint)
        check_image_values(sitk.GetArrayViewFromImage(img), task["image"])
        out_lab = sitk.GetImageFromArray(_map_labels(arr_lab, label_map))
        out_lab.CopyInformation(img)
        out_img = img
        shape, source = arr_lab.shape, [task["image"], task["label"]]
    elif kind in ("h5", "h5_slices"):
        if kind == "h5":
            image, label = read_h5_pair(task["file"], 3)
            source = [task["file"]]
            if task.get("axes", "zyx") == "xyz":
                image, label = image.transpose(2, 1, 0), label.transpose(2, 1, 0)
        else:
            images, labels = [], []
            for p in task["files"]:
                im, lb = read_h5_pair(p, 2)
                if images and im.shape != images[0].shape:
                    raise ConversionError(f"{p}: slice shape {im.shape} differs from {images[0].shape} of "
                                          f"{task['files'][0]}; the slices of one frame must have one shape.")
                images.append(im)
                labels.append(lb)
            image, label = np.stack(images), np.stack(labels)
            source = [f"{task['files'][0]} .. ({len(task['files'])} slices)"]
        where = source[0]
        check_label_values(label, allowed, where, hint)
        check_image_values(image, where)
        if image.dtype == np.float64:
            image = image.astype(np.float32)
        out_img = _from_array(image, task["spacing"])
        out_lab = _from_array(_map_labels(label, label_map), task["spacing"])
        shape = image.shape
    else:
        raise ValueError(f"unknown task kind {kind}")
    sitk.WriteImage(out_img, task["out_image"], useCompression=True)
    sitk.WriteImage(out_lab, task["out_label"], useCompression=True)
    return {"case": task["case"], "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in out_img.GetSpacing()[::-1]], "source": source}


def _safe_convert(task: dict):
    """Pool wrapper: return the error instead of raising, so the parent reports the case cleanly."""
    try:
        return True, convert_case(task)
    except ConversionError as e:
        return False, str(e)
    except Exception as e:  # unexpected: keep the case in the message
        return False, f"case {task.get('case')}: {type(e).__name__}: {e}"


def run_tasks(tasks: List[dict], num_processes: int, desc: str, verbose: bool = True) -> List[dict]:
    """Convert every task (serially for ``num_processes <= 1``), stop at the first error."""
    from tqdm import tqdm

    results = []
    bar = tqdm(total=len(tasks), desc=desc, unit="case", disable=not verbose, file=sys.stdout)
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for t in tasks:
                ok, res = _safe_convert(t)
                if not ok:
                    raise ConversionError(res)
                results.append(res)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: the parent may hold threads (ITK, torch) that a forked child would inherit
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
                for ok, res in pool.imap_unordered(_safe_convert, tasks):
                    if not ok:
                        pool.terminate()
                        raise ConversionError(res)
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    return sorted(results, key=lambda r: r["case"])


# ------------------------------------------------------------------------------------------------
# dataset folders and split files
# ------------------------------------------------------------------------------------------------
def make_task_paths(stage: str, case: str, role: str, file_ending: str = ".nii.gz") -> Dict[str, str]:
    img_dir, lab_dir = ("imagesTs", "labelsTs") if role == "test" else ("imagesTr", "labelsTr")
    return {"out_image": os.path.join(stage, img_dir, f"{case}_0000{file_ending}"),
            "out_label": os.path.join(stage, lab_dir, f"{case}{file_ending}")}


def make_dataset_dirs(stage: str, with_test: bool) -> None:
    for d in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if with_test else ()):
        os.makedirs(os.path.join(stage, d), exist_ok=True)


def plan_split_files(prep_base: str, folds: List[dict], settings: List[dict], overwrite: bool,
                     skipped: Sequence[str] = (), default: Optional[dict] = None) -> None:
    """Refuse early (before converting anything) when split files with other content are in the way.

    ``skipped``: settings of the protocol that this conversion does not write; an existing file of one
    of them is stale (it would describe other cases) and is in the way too.
    """
    from nnunet_semicl.data.splits import load_json, split_file_name

    if overwrite:
        return
    from nnunet_semicl.data.splits import DEFAULT_SETTING_FILE

    wanted = {"splits_final.json": folds}
    wanted.update({split_file_name(s["setting"]): s for s in settings})
    if default is not None:
        wanted[DEFAULT_SETTING_FILE] = default
    strip = lambda d: {k: v for k, v in d.items() if k != "created_by"} if isinstance(d, dict) else d
    for fname, content in wanted.items():
        path = os.path.join(prep_base, fname)
        if os.path.isfile(path) and strip(load_json(path)) != strip(content):
            raise FileExistsError(f"{path} already exists with different content (another split or protocol). "
                                  f"Pass --overwrite to replace the split files, or choose another --id.")
    for name in skipped:
        path = os.path.join(prep_base, split_file_name(name))
        if os.path.isfile(path):
            raise FileExistsError(f"{path} exists from an earlier conversion, but this conversion cannot make the "
                                  f"setting '{name}'. Pass --overwrite to remove it, or choose another --id.")


def write_split_files(prep_base: str, folds: List[dict], settings: List[dict], overwrite: bool,
                      skipped: Sequence[str] = (), default: Optional[dict] = None) -> List[str]:
    from nnunet_semicl.data.splits import (DEFAULT_SETTING_FILE, save_json, split_file_name, write_default_setting,
                                           write_split_file)

    os.makedirs(prep_base, exist_ok=True)
    for name in skipped:  # stale files of settings this conversion cannot make (only with --overwrite)
        path = os.path.join(prep_base, split_file_name(name))
        if os.path.isfile(path):
            os.remove(path)
    path = os.path.join(prep_base, "splits_final.json")
    save_json(folds, path)
    written = [path]
    for s in settings:
        written.append(write_split_file(prep_base, s, overwrite=overwrite))
    if default is not None:
        written.append(write_default_setting(prep_base, default, overwrite=overwrite))
    elif overwrite and os.path.isfile(os.path.join(prep_base, DEFAULT_SETTING_FILE)):
        os.remove(os.path.join(prep_base, DEFAULT_SETTING_FILE))  # names a setting this conversion did not make
    return written


def note_stale_preprocessing(prep_base: str, overwrite: bool, verbose: bool) -> None:
    """After --overwrite, an earlier fingerprint/plans would be reused by nnU-Net unless --clean is given."""
    if overwrite and os.path.isfile(os.path.join(prep_base, "dataset_fingerprint.json")):
        log(f"NOTE: {prep_base} holds a fingerprint and plans of the previous conversion; run "
            f"nnUNetv2_plan_and_preprocess with --clean so that they are recomputed.", verbose)


def next_steps(dataset_id: int, dataset_name: str, configs: str, settings: List[str],
               default: Optional[str] = None) -> str:
    s = settings[1] if len(settings) > 1 else (settings[0] if settings else None)
    lines = ["Next steps:",
             f"  nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configs} --verify_dataset_integrity",
             f"  nnunet_semicl sync-plans {dataset_id}"]
    if default:
        lines.append(f"  nnUNetv2_train {dataset_id} {configs.split()[0]} 0 -tr nnUNetTrainerACTIONpp   "
                     f"(the default setting, {default})")
    if s:
        lines.append(f"  nnUNetv2_train {dataset_id} {configs.split()[0]} 0 -p nnUNetPlans_{s} -tr <trainer>")
    return "\n".join(lines)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return round(time.time() - self.t0, 2)


# ------------------------------------------------------------------------------------------------
# the conversion pipeline, shared by the ACDC and LA converters
# ------------------------------------------------------------------------------------------------
#: ``locate(input folder, case ids)`` -> ({case id: worker-task keys of its source files}, absent case ids)
Locate = Callable[[str, Sequence[str]], Tuple[Dict[str, dict], List[str]]]


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the ACDC and LA converters; :func:`convert_dataset` does the rest."""
    title: str                                    # "ACDC": log lines and the progress bar
    module: str                                   # the converter, recorded in conversion_info.json
    unit: str                                     # what one case is called in messages: "case" / "volume"
    labeled_units: str                            # what a setting labels: "patients" / "volumes"
    default_id: int
    default_name: str
    locate: Dict[str, Locate]                     # per input layout, in the order messages name the layouts
    detect_layout: Callable[[str], str]           # input folder -> layout (raises when there is no data)
    hdf5_layout: str                              # the layout whose files store no spacing (--spacing applies)
    default_spacing: Tuple[float, float, float]   # (z, y, x) mm assumed for it
    isotropic_spacing: bool                       # --spacing may also be one value, for z, y and x
    spacing_note: str                             # conversion_info.json: why the spacing is assumed
    channel_name: str
    labels: Dict[str, int]
    dataset_text: Callable[[str], Dict[str, str]]  # layout -> dataset.json description, reference, licence
    list_files: Tuple[Tuple[str, Tuple[str, ...]], ...]  # the input's own *.list files, the roles each lists
    list_layouts: Tuple[str, ...]                 # the layouts that come with such list files
    list_entry_ending: str                        # removed from list entries (SSL4MIS lists may name files)
    methods_section: str                          # where the protocol is specified: "methods.md 7.1"
    next_steps_configs: str                       # the nnU-Net configurations to plan
    task_defaults: Dict[str, object] = field(default_factory=dict)  # worker-task keys the located sources lack
    case_info_keys: Tuple[str, ...] = ()          # source keys recorded per case in conversion_info.json
    # dataset notes in conversion_info.json, each where it has always stood in the file
    info_after_spacing: Dict[str, str] = field(default_factory=dict)
    info_after_protocol: Dict[str, str] = field(default_factory=dict)


def assumed_spacing(spacing: Optional[Sequence[float]], spec: DatasetSpec) -> Tuple[float, ...]:
    """``--spacing`` (or the dataset's default) as (z, y, x) mm; checked even where the files carry their own."""
    spacing = tuple(float(s) for s in (spacing or spec.default_spacing))
    if spec.isotropic_spacing and len(spacing) == 1:
        spacing = spacing * 3
    if len(spacing) != 3 or min(spacing) <= 0:
        counts = "one or three" if spec.isotropic_spacing else "three"
        raise ConversionError(f"--spacing needs {counts} positive values (z y x, mm), got {spacing}.")
    return spacing


def compare_input_lists(root: str, protocol: "Protocol", spec: DatasetSpec, verbose: bool) -> List[str]:
    """Warn when the input's own ``*.list`` files disagree with the built-in protocol (which is used)."""
    notes = []
    for fname, roles in spec.list_files:
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            continue
        listed = set(read_id_list(path, spec.list_entry_ending))
        expected = set(protocol.cases_of(g for r in roles for g in getattr(protocol, r)))
        if listed != expected:
            notes.append(f"{path} differs from the built-in protocol ({len(listed - expected)} extra, "
                         f"{len(expected - listed)} absent ids); the built-in lists ({spec.methods_section}) are "
                         f"used.")
    for n in notes:
        log(f"WARNING: {n}", verbose)
    return notes


def check_missing(missing: List[str], protocol: "Protocol", spec: DatasetSpec, input_dir: str, allow_missing: bool,
                  verbose: bool) -> None:
    """Protocol cases absent from the input: an error, or with ``--allow-missing`` a warning."""
    unit = spec.unit
    if missing and not allow_missing:
        by_role = {r: [c for c in missing if protocol.role_of(protocol.group_of(c)) == r]
                   for r in ("train", "val", "test")}
        detail = "; ".join(f"{r}: {short_list(v)}" for r, v in by_role.items() if v)
        raise ConversionError(f"{len(missing)} {unit}(s) of the protocol are not in {input_dir} ({detail}). Supply "
                              f"the complete dataset, or pass --allow-missing to convert the {unit}s that are present "
                              f"(the split files then cover only those; settings whose labeled {spec.labeled_units} "
                              f"are absent are skipped).")
    if missing:
        log(f"WARNING: {len(missing)} protocol {unit}(s) absent from the input and left out (--allow-missing): "
            f"{short_list(missing)}", verbose)


def default_setting_record(protocol: "Protocol", settings: List[dict], created_by: str, verbose: bool
                           ) -> Optional[dict]:
    """``semicl_default_setting.json`` for the protocol's default setting (5pct), if this conversion makes it."""
    from nnunet_semicl.data.splits import default_setting_content

    if protocol.default_setting in [s["setting"] for s in settings]:
        return default_setting_content(protocol.default_setting, created_by=created_by)
    log(f"WARNING: no default setting: '{protocol.default_setting}' was skipped, so trainings need -p "
        f"nnUNetPlans_<setting> (or `nnunet_semicl split ... --default`).", verbose)
    return None


def convert_dataset(spec: DatasetSpec, protocol: "Protocol", input_dir: str, raw: Optional[str],
                    preprocessed: Optional[str], dataset_id: int, name: str, layout: str,
                    spacing: Optional[Sequence[float]], cv_folds: Optional[int], allow_missing: bool,
                    num_processes: int, overwrite: bool, verbose: bool, created_by: str) -> dict:
    """Convert ``spec``'s dataset (arguments as ``convert_acdc``); return the summary.

    Every check that can fail on the input runs before anything is written, and the raw dataset is
    staged, so a failed conversion leaves the output roots as they were.
    """
    from nnunet_semicl.dataset_conversion.protocols import make_folds, make_settings

    timer = Timer()
    protocol.check()
    raw_root, prep_root = output_roots(raw, preprocessed)
    input_dir = os.path.abspath(input_dir)
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    dataset_dir = os.path.join(raw_root, dataset_name)
    check_dataset_id_free(dataset_name, [raw_root, prep_root, os.environ.get("nnUNet_results")])
    if os.path.exists(dataset_dir) and not overwrite:
        raise FileExistsError(f"{dataset_dir} already exists. Pass --overwrite to replace it (then run "
                              f"nnUNetv2_plan_and_preprocess again), or choose another --id.")
    if layout == "auto":
        layout = spec.detect_layout(input_dir)
    if layout not in spec.locate:
        raise ConversionError(f"Unknown layout '{layout}' (use {', '.join(spec.locate)} or auto).")
    assumes_spacing = layout == spec.hdf5_layout
    if not assumes_spacing and spacing is not None:
        log(f"NOTE: --spacing is ignored for the {layout} release (its files carry their geometry).", verbose)
    spacing = assumed_spacing(spacing, spec)

    cases = protocol.cases_of(protocol.all_groups)
    found, missing = spec.locate[layout](input_dir, cases)
    notes = compare_input_lists(input_dir, protocol, spec, verbose) if layout in spec.list_layouts else []
    check_missing(missing, protocol, spec, input_dir, allow_missing, verbose)

    present = [c for c in cases if c in found]
    folds = make_folds(protocol, present, cv_folds)
    settings, skipped = make_settings(protocol, folds, cv=cv_folds is not None, created_by=created_by)
    for s, why in skipped:
        log(f"WARNING: setting '{s}' skipped: {why}", verbose)
    skipped_names = [n for n, _ in skipped]
    prep_base = os.path.join(prep_root, dataset_name)
    default = default_setting_record(protocol, settings, created_by, verbose)
    plan_split_files(prep_base, folds, settings, overwrite, skipped=skipped_names, default=default)

    roles = {c: protocol.role_of(protocol.group_of(c)) for c in present}
    n_test = sum(r == "test" for r in roles.values())
    n_train = len(present) - n_test
    with Staging(raw_root, dataset_name, overwrite, verbose) as stage:
        make_dataset_dirs(stage, with_test=n_test > 0)
        tasks = [{**spec.task_defaults, **found[c], "case": c, "spacing": spacing,
                  **make_task_paths(stage, c, roles[c])} for c in present]
        log(f"Converting {len(tasks)} {spec.title} {spec.unit}s ({layout} layout) from {input_dir} with "
            f"{num_processes} process(es)", verbose)
        results = run_tasks(tasks, num_processes, spec.title, verbose)
        dataset_json = {"channel_names": {"0": spec.channel_name}, "labels": spec.labels, "numTraining": n_train,
                        "file_ending": ".nii.gz", "name": name, **spec.dataset_text(layout)}
        write_json(dataset_json, os.path.join(stage, "dataset.json"))
        by_case = {r["case"]: r for r in results}
        info = {
            "converter": spec.module,
            "created_by": created_by,
            "input": input_dir,
            "layout": layout,
            "spacing_zyx_mm": list(spacing) if assumes_spacing else "from the image files",
            "spacing_note": spec.spacing_note if assumes_spacing else "",
            **spec.info_after_spacing,
            "protocol": protocol.name, "protocol_source": protocol.source,
            **spec.info_after_protocol,
            "cv_folds": cv_folds, "allow_missing": allow_missing, "missing_cases": missing,
            "skipped_settings": dict(skipped), "list_file_notes": notes,
            "cases": {c: {"role": roles[c], **{k: found[c][k] for k in spec.case_info_keys if k in found[c]},
                          "shape_zyx": by_case[c]["shape"], "source": by_case[c]["source"]} for c in present},
        }
        write_json(info, os.path.join(stage, "conversion_info.json"))
    split_paths = write_split_files(prep_base, folds, settings, overwrite, skipped=skipped_names, default=default)
    note_stale_preprocessing(prep_base, overwrite, verbose)
    summary = {"dataset_name": dataset_name, "dataset_dir": dataset_dir,
               "layout": layout, "n_train_cases": n_train, "n_test_cases": n_test,
               "n_fold0_train": len(folds[0]["train"]), "n_fold0_val": len(folds[0]["val"]), "n_folds": len(folds),
               "missing": missing, "settings": [s["setting"] for s in settings], "skipped_settings": dict(skipped),
               "split_files": split_paths, "default_setting": default and default["setting"],
               "seconds": timer.seconds}
    log(f"Wrote {dataset_dir}: {n_train} training {spec.unit}s (fold 0: {summary['n_fold0_train']} train / "
        f"{summary['n_fold0_val']} val), {n_test} test {spec.unit}s in imagesTs/labelsTs, settings "
        f"{summary['settings']} in {prep_base} ({summary['seconds']:.1f} s).", verbose)
    log(next_steps(int(dataset_id), dataset_name, spec.next_steps_configs, summary["settings"],
                   summary["default_setting"]), verbose)
    return summary


# ------------------------------------------------------------------------------------------------
# command line (the converters; evaluate shares exit_2_on and module_main)
# ------------------------------------------------------------------------------------------------
def command_line() -> str:
    """The command as typed (recorded in the split files and conversion_info.json)."""
    import shlex

    return " ".join([os.path.basename(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])


def add_converter_arguments(p: argparse.ArgumentParser, spec: DatasetSpec, description: str, input_help: str,
                            spacing_help: str, cv_help: str) -> None:
    """The arguments of ``nnunet_semicl convert-*`` (the parameters of :func:`convert_dataset`)."""
    p.description = description
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-i", "--input", required=True, help=input_help)
    p.add_argument("--id", type=int, default=spec.default_id, help=f"dataset id (default {spec.default_id})")
    p.add_argument("--name", default=spec.default_name, help=f"dataset name (default {spec.default_name})")
    p.add_argument("--layout", choices=("auto",) + tuple(spec.locate), default="auto")
    if spec.isotropic_spacing:
        p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM", help=spacing_help)
    else:
        p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"), help=spacing_help)
    p.add_argument("--cv", type=int, nargs="?", const=5, default=None, metavar="K", help=cv_help)
    p.add_argument("--allow-missing", action="store_true",
                   help=f"convert the protocol {spec.unit}s that are present and leave out absent ones (default: "
                        f"error)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset and its split files")
    p.add_argument("--raw", default=None, help="raw root (default $nnUNet_raw)")
    p.add_argument("--preprocessed", default=None, help="preprocessed root for the split files "
                                                        "(default $nnUNet_preprocessed)")
    p.add_argument("-q", "--quiet", action="store_true")


def run_converter(command: str, convert: Callable[..., dict], args: argparse.Namespace) -> None:
    """``nnunet_semicl <command>``: ``convert`` (``convert_acdc`` / ``convert_la``) with the parsed arguments."""
    with exit_2_on(command, ConversionError, FileExistsError):
        convert(args.input, args.raw, args.preprocessed, args.id, args.name, args.layout, args.spacing, args.cv,
                args.allow_missing, args.np, args.overwrite, not args.quiet, created_by=command_line())
