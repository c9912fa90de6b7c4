"""Reading and checking the input cases of the ACDC and LA converters, and the per-case worker.

* readers: :func:`read_sitk` (NIfTI, NRRD), :func:`read_h5_pair` (SSL4MIS / UA-MT HDF5),
  :func:`read_id_list` (``*.list`` files); each raises a :class:`ConversionError` that names the file
  and says how to fix it.
* checks: :func:`check_same_geometry` (image and label on one voxel grid), :func:`check_label_values`,
  :func:`check_image_values`; :func:`raise_if_problems` reports what a locate function found.
* :func:`convert_case`: reads, checks and writes one image/label pair; the converters only build task
  dicts, so that the same checks apply to every input layout.

Heavy imports (numpy, SimpleITK, h5py) happen inside functions: the command-line help must stay fast.
"""
import os
from typing import Dict, List, Optional, Sequence

from nnunet_semicl.errors import ConversionError
from nnunet_semicl.files import incomplete_file_problem

#: Tolerances for "same geometry" between an image and its label (mm, relative, direction cosines).
SPACING_RTOL = 1e-3
ORIGIN_ATOL = 1e-2
DIRECTION_ATOL = 1e-3


def raise_if_problems(root: str, problems: Sequence[str]) -> None:
    """Report every problem a locate function found in ``root`` at once (the first 8), not one per run."""
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {root}: " + " | ".join(problems[:8])
                              + (f" | ... (+{len(problems) - 8} more)" if len(problems) > 8 else ""))


# ------------------------------------------------------------------------------------------------
# reading and checking
# ------------------------------------------------------------------------------------------------
def read_sitk(path: str, what: str):
    import SimpleITK as sitk

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
