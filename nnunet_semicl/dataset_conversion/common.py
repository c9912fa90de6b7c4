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

Heavy imports (numpy, SimpleITK, h5py, tqdm) happen inside functions: the command-line help must stay
fast.
"""
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

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
    """Write into ``<root>/.semicl_partial_<name>_<pid>``; move to ``<root>/<name>`` on success."""

    def __init__(self, root: str, name: str, overwrite: bool):
        self.root, self.name, self.overwrite = root, name, overwrite
        self.final = os.path.join(root, name)
        self.path = os.path.join(root, f".semicl_partial_{name}_{os.getpid()}")

    def __enter__(self) -> str:
        if os.path.exists(self.final) and not self.overwrite:
            raise FileExistsError(f"{self.final} already exists. Pass --overwrite to replace it (its preprocessed "
                                  f"data then need `nnUNetv2_plan_and_preprocess` again), or choose another --id.")
        os.makedirs(self.root, exist_ok=True)
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

    if not os.path.isfile(path):
        raise ConversionError(f"Missing {what}: {path}")
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
                     skipped: Sequence[str] = ()) -> None:
    """Refuse early (before converting anything) when split files with other content are in the way.

    ``skipped``: settings of the protocol that this conversion does not write; an existing file of one
    of them is stale (it would describe other cases) and is in the way too.
    """
    from nnunet_semicl.data.splits import load_json, split_file_name

    if overwrite:
        return
    wanted = {"splits_final.json": folds}
    wanted.update({split_file_name(s["setting"]): s for s in settings})
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
                      skipped: Sequence[str] = ()) -> List[str]:
    from nnunet_semicl.data.splits import save_json, split_file_name, write_split_file

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
    return written


def note_stale_preprocessing(prep_base: str, overwrite: bool, verbose: bool) -> None:
    """After --overwrite, an earlier fingerprint/plans would be reused by nnU-Net unless --clean is given."""
    if overwrite and os.path.isfile(os.path.join(prep_base, "dataset_fingerprint.json")):
        log(f"NOTE: {prep_base} holds a fingerprint and plans of the previous conversion; run "
            f"nnUNetv2_plan_and_preprocess with --clean so that they are recomputed.", verbose)


def next_steps(dataset_id: int, dataset_name: str, configs: str, settings: List[str]) -> str:
    s = settings[1] if len(settings) > 1 else (settings[0] if settings else None)
    lines = [f"Next steps:",
             f"  nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configs} --verify_dataset_integrity",
             f"  nnunet_semicl sync-plans {dataset_id}"]
    if s:
        lines.append(f"  nnUNetv2_train {dataset_id} {configs.split()[0]} 0 -p nnUNetPlans_{s} -tr <trainer>")
    return "\n".join(lines)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return round(time.time() - self.t0, 2)


def command_line() -> str:
    """The command as typed (recorded in the split files and conversion_info.json)."""
    import shlex

    return " ".join([os.path.basename(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])


def cli_error(command: str, e: BaseException) -> None:
    print(f"nnunet_semicl {command}: error: {e}", file=sys.stderr)
    raise SystemExit(2)
