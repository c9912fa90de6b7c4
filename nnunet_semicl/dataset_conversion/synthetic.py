"""Built-in synthetic dataset: cardiac-like MR phantoms written as a real nnU-Net raw dataset.

Each case is a short-axis stack (3D, anisotropic spacing) or a single slice (2D) with the ACDC labels
(1 RV, 2 myocardium "MLV", 3 LV cavity "LVC"). Shapes vary per patient (size, ellipticity,
rotation, position, RV side and extent, apex-to-base tapering); each patient has an end-diastolic
and an end-systolic frame (smaller cavity, thicker wall) named ``phantomXXX_frame01/02``, so that
``--group 'phantom\\d+'`` keeps a patient's frames together. The heart covers a few percent of the
image (strong class imbalance). Images get tissue texture, partial-volume blur, a smooth
multiplicative bias field, Rician noise and a random global intensity scale, like MR.

Usage::

    python -m nnunet_semicl.dataset_conversion.synthetic --id 990 --patients 20 --test-patients 5
    nnunet_semicl synthetic --id 990 ...        # same thing

Training cases go to ``imagesTr``/``labelsTr``; the held-out patients to ``imagesTs`` with their
labels in ``labelsTs`` (not used by nnU-Net; for evaluation).
"""
import argparse
import os
import re
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_semicl.errors import InputError
from nnunet_semicl.files import partial_folder, remove_stale_partials, save_json

#: the built-in dataset's id and name (the demo, the tests and the step benchmark use it)
DATASET_ID = 990
DATASET_NAME = "SemiCLPhantom"
DATASET = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}


@dataclass
class PhantomSpec:
    shape: Tuple[int, int, int] = (10, 64, 64)       # (z, y, x); z = 1 gives a 2D dataset
    spacing: Tuple[float, float, float] = (8.0, 2.0, 2.0)  # mm, (z, y, x)
    noise: float = 0.06                              # Rician noise std relative to blood intensity


def _smooth_field(rng: np.random.RandomState, shape, control: int, amplitude: float) -> np.ndarray:
    """A smooth random field: coarse Gaussian noise upsampled with cubic-ish interpolation."""
    from scipy.ndimage import zoom

    coarse = rng.randn(*[max(2, min(control, s)) for s in shape])
    field = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=3, mode="nearest")
    field = field[tuple(slice(0, s) for s in shape)]
    return amplitude * field


def _ellipse(yy, xx, cy, cx, a, b, theta) -> np.ndarray:
    """Normalised ellipse radius (< 1 inside) on coordinates in mm."""
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    return np.sqrt(u * u + v * v)


def sample_patient(rng: np.random.RandomState) -> Dict[str, float]:
    """Random anatomy shared by the two frames of one patient."""
    return {
        "lv_radius": rng.uniform(11.0, 17.0),         # mm, end-diastolic cavity
        "ellipticity": rng.uniform(0.8, 1.0),
        "theta": rng.uniform(0, np.pi),
        "wall": rng.uniform(5.0, 8.0),                # mm, end-diastolic myocardium thickness
        "rv_angle": rng.uniform(-0.6, 0.6) + np.pi,   # RV on the patient's right, with variation
        "rv_scale": rng.uniform(1.1, 1.5),
        "rv_extent": rng.uniform(0.55, 0.85),         # fraction of the LV's apex-to-base length
        "cy": rng.uniform(-0.18, 0.18),               # heart centre, fraction of the field of view
        "cx": rng.uniform(-0.18, 0.18),
        "apex_first": float(rng.rand() < 0.5),
        "body_a": rng.uniform(0.40, 0.48),            # body ellipse, fraction of FOV
        "body_b": rng.uniform(0.33, 0.42),
        "intensity_scale": float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
        "contraction": rng.uniform(0.6, 0.8),         # ES cavity radius / ED cavity radius
    }


def render_phantom(anat: Dict[str, float], frame: int, spec: PhantomSpec, rng: np.random.RandomState
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """One frame (0 = ED, 1 = ES) -> (image float32 [z, y, x], label uint8 [z, y, x])."""
    from scipy.ndimage import gaussian_filter

    nz, ny, nx = spec.shape
    sz, sy, sx = spec.spacing
    fov_y, fov_x = ny * sy, nx * sx
    yy, xx = np.meshgrid((np.arange(ny) - ny / 2 + 0.5) * sy, (np.arange(nx) - nx / 2 + 0.5) * sx, indexing="ij")
    cy, cx = anat["cy"] * fov_y, anat["cx"] * fov_x
    es = frame == 1
    lv_r = anat["lv_radius"] * (anat["contraction"] if es else 1.0)
    wall = anat["wall"] * (1.3 if es else 1.0)

    label = np.zeros(spec.shape, dtype=np.uint8)
    for z in range(nz):
        # apex-to-base taper: radii shrink toward the apex; a 2D dataset is a mid-ventricular slice
        pos = 0.5 if nz == 1 else z / (nz - 1)
        if anat["apex_first"]:
            pos = 1.0 - pos
        taper = np.sqrt(max(0.0, 1.0 - (max(0.0, 0.85 - pos) / 0.85) ** 2 * 0.9)) if nz > 1 else 1.0
        if nz > 1 and pos < 0.08:  # beyond the apex: no heart
            continue
        a, b = lv_r * taper, lv_r * taper * anat["ellipticity"]
        r_lv = _ellipse(yy, xx, cy, cx, a, b, anat["theta"])
        r_myo = _ellipse(yy, xx, cy, cx, a + wall, b + wall, anat["theta"])
        sl = np.zeros((ny, nx), dtype=np.uint8)
        sl[r_myo < 1] = 2
        sl[r_lv < 1] = 3
        if nz == 1 or pos > 1.0 - anat["rv_extent"]:
            d = (a + wall) * 0.95
            rcy, rcx = cy + d * np.sin(anat["rv_angle"]), cx + d * np.cos(anat["rv_angle"])
            ra = (a + wall) * anat["rv_scale"] * (0.85 if es else 1.0)
            r_rv = _ellipse(yy, xx, rcy, rcx, ra, ra * 0.6, anat["rv_angle"] + np.pi / 2)
            r_guard = _ellipse(yy, xx, cy, cx, a + wall + 1.5, b + wall + 1.5, anat["theta"])
            sl[(r_rv < 1) & (r_guard >= 1)] = 1
        label[z] = sl

    # intensities: air, body tissue with texture, dark myocardium, bright blood
    body = _ellipse(yy, xx, 0.0, 0.0, anat["body_a"] * fov_x, anat["body_b"] * fov_y, 0.0) < 1
    img = np.full(spec.shape, 0.03, dtype=np.float64)
    texture = _smooth_field(rng, spec.shape, 8, 0.08)
    img[:, body] = 0.45
    img += texture * body[None]
    img[label == 2] = 0.3 + 0.03 * rng.randn()
    img[(label == 1) | (label == 3)] = 1.0
    img = gaussian_filter(img, sigma=(0.0, 0.7, 0.7))  # partial volume in-plane
    bias = np.exp(_smooth_field(rng, spec.shape, 3, 0.15))
    img = img * bias
    n1 = rng.randn(*spec.shape) * spec.noise
    n2 = rng.randn(*spec.shape) * spec.noise
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)  # Rician magnitude noise
    img = img * anat["intensity_scale"] * 400.0
    return img.astype(np.float32), label


def _write(arr: np.ndarray, spacing_zyx, path: str) -> None:
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(im, path, useCompression=True)


def case_name(patient: int, frame: int) -> str:
    return f"phantom{patient:03d}_frame{frame + 1:02d}"


def write_phantom_images(folder: str, patients: List[int], spec: PhantomSpec, seed: int,
                         label_folder: Optional[str] = None) -> List[str]:
    """Write both frames of the given patients as ``<case>_0000.nii.gz`` (+ labels if a folder is given)."""
    os.makedirs(folder, exist_ok=True)
    if label_folder:
        os.makedirs(label_folder, exist_ok=True)
    names = []
    for p in patients:
        rng = np.random.RandomState(seed * 100003 + p)
        anat = sample_patient(rng)
        for frame in (0, 1):
            img, lab = render_phantom(anat, frame, spec, rng)
            name = case_name(p, frame)
            _write(img, spec.spacing, os.path.join(folder, f"{name}_0000.nii.gz"))
            if label_folder:
                _write(lab, spec.spacing, os.path.join(label_folder, f"{name}.nii.gz"))
            names.append(name)
    return names


def generate_dataset(raw_root: str, dataset_id: int = DATASET_ID, name: str = DATASET_NAME, n_patients: int = 20,
                     n_test_patients: int = 5, dim: int = 3, shape: Optional[Tuple[int, ...]] = None,
                     spacing: Optional[Tuple[float, ...]] = None, seed: int = 0, overwrite: bool = False,
                     verbose: bool = True) -> str:
    """Write ``Dataset<id>_<name>`` under ``raw_root`` and return its folder.

    Every option is checked before anything is written (:class:`InputError`, naming the option), and the
    dataset is written into a staging folder and renamed into place at the end: an error or a kill never
    leaves a half-made dataset folder (the next run removes a killed run's staging folder).
    """
    shape, spacing = check_options(dataset_id, name, n_patients, n_test_patients, dim, shape, spacing)
    spec = PhantomSpec(shape=shape, spacing=spacing)

    out = os.path.join(raw_root, f"Dataset{int(dataset_id):03d}_{name}")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists. Pass overwrite=True (--overwrite) to replace it.")
    os.makedirs(raw_root, exist_ok=True)
    remove_stale_partials(raw_root, os.path.basename(out))
    stage = partial_folder(raw_root, os.path.basename(out))
    try:
        _write_dataset(stage, name, spec, n_patients, n_test_patients, seed, dim, verbose, out)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


#: smallest in-plane size: the rendering's smoothing and nnU-Net's planning need a few voxels per axis
MIN_INPLANE = 16


def check_options(dataset_id, name, n_patients, n_test_patients, dim, shape, spacing):
    """The options of :func:`generate_dataset` checked (InputError naming the option); (shape, spacing) as used."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise InputError(f"--id {dataset_id}: nnU-Net dataset ids are integers from 1 to 999.")
    if not name or not re.match(r"^[A-Za-z0-9_-]+$", str(name)):
        raise InputError(f"--name '{name}': use letters, digits, '_' and '-' only (it names the dataset folder).")
    if dim not in (2, 3):
        raise InputError(f"--dim {dim}: must be 2 or 3.")
    if n_patients < 1:
        raise InputError(f"--patients {n_patients}: need at least one training patient.")
    if n_test_patients < 0:
        raise InputError(f"--test-patients {n_test_patients}: must be 0 or more.")
    if shape is None:
        shape = (10, 64, 64) if dim == 3 else (1, 64, 64)
    shape = tuple(int(s) for s in shape)
    given = " ".join(map(str, shape))
    if len(shape) == 2 and dim == 2:
        shape = (1, *shape)
    if len(shape) != 3 or (dim == 2 and shape[0] != 1):
        raise InputError(f"--shape {given}: a {dim}D dataset needs "
                         f"{'y x (or 1 y x)' if dim == 2 else 'z y x'} voxels.")
    if min(shape[1:]) < MIN_INPLANE or (dim == 3 and shape[0] < 2):
        raise InputError(f"--shape {given}: y and x need at least {MIN_INPLANE} voxels"
                         f"{' and z at least 2' if dim == 3 else ''}.")
    spacing = (8.0, 2.0, 2.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"--spacing {' '.join(map(str, spacing))}: three positive values (z y x, mm).")
    return shape, spacing


def _write_dataset(out: str, name: str, spec: PhantomSpec, n_patients: int, n_test_patients: int, seed: int,
                   dim: int, verbose: bool, final: str) -> None:
    shape, spacing = spec.shape, spec.spacing
    train = list(range(n_patients))
    test = list(range(n_patients, n_patients + n_test_patients))
    if verbose:
        print(f"Writing {len(train) * 2} training and {len(test) * 2} test phantoms ({dim}D, shape {shape}, "
              f"spacing {spacing} mm) to {final}", flush=True)
    write_phantom_images(os.path.join(out, "imagesTr"), train, spec, seed, os.path.join(out, "labelsTr"))
    if test:
        write_phantom_images(os.path.join(out, "imagesTs"), test, spec, seed, os.path.join(out, "labelsTs"))
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": LABELS,
        "numTraining": len(train) * 2,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "nnunet_semicl synthetic cardiac-like MR phantoms (ED/ES frames per patient)",
        "reference": "generated by nnunet_semicl.dataset_conversion.synthetic",
        "licence": "CC0 (synthetic)",
    }
    save_json(dataset_json, os.path.join(out, "dataset.json"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=int, default=DATASET_ID, help=f"dataset id (default {DATASET_ID})")
    p.add_argument("--name", default=DATASET_NAME)
    p.add_argument("--patients", type=int, default=20, help="training patients (2 frames each)")
    p.add_argument("--test-patients", type=int, default=5, help="held-out patients for imagesTs/labelsTs")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3))
    p.add_argument("--shape", type=int, nargs="+", default=None, help="(z) y x voxels")
    p.add_argument("--spacing", type=float, nargs=3, default=None, help="z y x mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--raw", default=None, help="raw root (default: $nnUNet_raw)")
    a = p.parse_args(argv)
    raw = a.raw or os.environ.get("nnUNet_raw")
    if not raw:
        p.error("set nnUNet_raw or pass --raw")
    from nnunet_semicl.launch import exit_2_on

    with exit_2_on("synthetic", InputError, FileExistsError):
        generate_dataset(raw, a.id, a.name, a.patients, a.test_patients, a.dim,
                         tuple(a.shape) if a.shape else None, tuple(a.spacing) if a.spacing else None, a.seed,
                         a.overwrite)


if __name__ == "__main__":
    main()
