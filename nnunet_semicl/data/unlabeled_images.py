"""Add images that have no annotation to an nnU-Net raw dataset (``nnunet_semicl add-unlabeled``).

nnU-Net requires a label map for every training image. Each unlabeled image gets one filled with
nnU-Net's **ignore label** (added to ``dataset.json`` if the dataset has none), so the stock
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` accepts it, nnU-Net's own losses and
metrics skip it, and a stock trainer that ever saw it would learn nothing from it.

The dataset fingerprint is the one catch: nnU-Net takes intensity statistics (the CT
normalisation) from voxels with label > 0, which would include every voxel of an all-ignore image.
So this command computes the fingerprint from the annotated images only and writes it to
``nnUNet_preprocessed/<Dataset>/dataset_fingerprint.json``; the stock planner reuses an existing
fingerprint unless given ``--clean``. The result is exactly the fingerprint of the annotated
dataset, whatever the unlabeled images contain.

The ids of the added images are recorded in ``dataset.json`` under ``semicl_unlabeled_cases``;
``nnunet_semicl split`` and our trainers read them from there (they are never labeled and never
validation cases).
"""
import os
import re
import shutil
import time
from typing import Dict, List

import numpy as np

from nnunet_semicl.data.splits import UNLABELED_KEY
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import incomplete_file_problem, load_json, partial_folder, remove_stale_partials, save_json


#: a ``--prefix``: plain case-id characters only (no path separators, no '..', no spaces)
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]*$")
#: a case id taken from an input file name
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGING_NAME = "add_unlabeled"


def check_prefix(prefix: str) -> None:
    if not PREFIX_RE.match(prefix or ""):
        raise InputError(f"--prefix '{prefix}' may only contain letters, digits, '_' and '-' (it starts the new "
                         f"case ids, which name files inside imagesTr/labelsTr), e.g. --prefix unl_.")


def _case_files(folder: str, file_ending: str, n_channels: int) -> Dict[str, List[str]]:
    if not os.path.isdir(folder):
        raise InputError(f"Input folder {folder} does not exist.")
    files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise InputError(f"Input folder {folder} is empty: there are no unlabeled images to add.")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    cases: Dict[str, Dict[int, str]] = {}
    bad = []
    for f in files:
        m = pattern.match(f)
        if m is None or not CASE_ID_RE.match(m.group(1)) or not os.path.isfile(os.path.join(folder, f)):
            bad.append(f)
            continue
        cases.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    if bad:
        raise InputError(f"{folder}: files not named CASE_XXXX{file_ending} (nnU-Net's image naming, XXXX = "
                         f"channel; CASE of letters, digits, '_', '-', '.'): {bad[:5]}{' ...' if len(bad) > 5 else ''}."
                         f" Rename or remove them.")
    out = {}
    for case, ch in cases.items():
        missing = [c for c in range(n_channels) if c not in ch]
        extra = [c for c in ch if c >= n_channels]
        if missing or extra:
            raise InputError(f"{folder}: case '{case}' has channels {sorted(ch)}, the dataset expects "
                             f"0..{n_channels - 1}. Missing {missing}, unexpected {extra}.")
        out[case] = [ch[c] for c in range(n_channels)]
    return out


def read_checked(rw, files: List[str]):
    """Read one case's channels with the dataset's reader; refuse what nnU-Net could not use, naming the file:
    incomplete (truncated) files, unreadable files, files with more than one channel, NaN/Inf.

    (SimpleITK's NIfTI reader already turns NaN into 0; NRRD, MHA and others keep them.)
    """
    for f in files:
        problem = incomplete_file_problem(f)
        if problem:
            raise InputError(f"{f}: {problem}. The file is truncated or damaged; copy it again.")
    try:
        data, props = rw.read_images(files)
    except Exception as e:  # nnU-Net's readers raise RuntimeError/AssertionError with details on stdout
        raise InputError(f"{files}: nnU-Net's {type(rw).__name__} cannot read this case ({type(e).__name__}: "
                         f"{str(e).strip() or 'channels differ in shape or spacing'}). Each file must be one "
                         f"channel of the case, all with the same grid.") from None
    if data.shape[0] != len(files):
        raise InputError(f"{files}: the file(s) hold {data.shape[0]} channel(s) (a 4D or multi-component image?) "
                         f"where nnU-Net expects {len(files)}: one channel per file (CASE_0000, CASE_0001, ...). "
                         f"Split the channels into separate files.")
    if not np.isfinite(data).all():
        raise InputError(f"{files}: the image contains NaN or Inf values; fix it before adding it.")
    return data, props


def _check_like_nnunet(image_files: List[str], label_file: str, n_channels: int, rw) -> None:
    """nnU-Net's own per-case check of ``--verify_dataset_integrity`` on the staged files."""
    import contextlib
    import io

    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            ok = check_cases(image_files, label_file, n_channels, type(rw))
        except Exception as e:
            ok, _ = False, out.write(f"{type(e).__name__}: {e}")
    if not ok:
        text = " ".join(out.getvalue().split())
        raise InputError(f"nnU-Net's dataset check would reject {image_files}: {text[:600]}")


def labeled_only_fingerprint(dataset_name: str, unlabeled: List[str], num_processes: int = 2) -> dict:
    """nnU-Net's fingerprint of the dataset without the given (unlabeled) cases; written to preprocessed."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    fpe = DatasetFingerprintExtractor(dataset_name, num_processes=num_processes, verbose=False)
    fpe.dataset = {k: v for k, v in fpe.dataset.items() if k not in set(unlabeled)}
    if not fpe.dataset:
        raise InputError(f"{dataset_name} has no annotated training case: nothing to plan from.")
    return fpe.run(overwrite_existing=True)


def add_unlabeled_images(dataset_name_or_id, input_folder: str, prefix: str = "", num_processes: int = 2,
                         compute_fingerprint: bool = True, verbose: bool = True) -> List[str]:
    """Copy the images of ``input_folder`` into ``imagesTr`` with all-ignore label maps; return the new ids.

    Everything is checked, then staged in a hidden folder of the dataset and checked again as nnU-Net
    would, before the dataset is touched. If anything fails while committing (moving the files in,
    ``dataset.json``, the fingerprint), the dataset and the fingerprint are restored.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_semicl.data.dataset_lookup import check_dataset_json, resolve_dataset_name
    from nnunet_semicl.files import check_writable

    check_prefix(prefix)
    dataset_name = resolve_dataset_name(dataset_name_or_id, need_raw=True)
    raw = os.path.join(str(nnUNet_raw), dataset_name)
    ds_path = os.path.join(raw, "dataset.json")
    dataset_json = check_dataset_json(load_json(ds_path), ds_path)
    # refused before anything is written (not a rollback with chained tracebacks)
    for sub in ("", "imagesTr", "labelsTr"):
        check_writable(os.path.join(raw, sub), "add-unlabeled writes dataset.json and the new cases there")
    if compute_fingerprint:
        check_writable(os.path.join(str(nnUNet_preprocessed), dataset_name),
                       "add-unlabeled writes the fingerprint there")
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    cases = _case_files(input_folder, ending, n_channels)

    images_tr, labels_tr = os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr")
    existing = {f[: -len(ending) - 5] for f in os.listdir(images_tr) if f.endswith(ending)}
    new_ids = {case: f"{prefix}{case}" for case in cases}
    clash = sorted(i for i in new_ids.values() if i in existing)
    if clash:
        raise InputError(f"{dataset_name} already has training cases named {clash[:5]}: pass --prefix (e.g. "
                         f"--prefix unl_) to give the unlabeled images distinct ids.")

    labels = dict(dataset_json["labels"])
    if "ignore" not in labels:
        values = [v if isinstance(v, int) else max(v) for v in labels.values()]
        labels["ignore"] = int(max(values)) + 1
    ignore = int(labels["ignore"])
    highest = max(v if isinstance(v, int) else max(v) for k, v in labels.items() if k != "ignore")
    if ignore <= highest:
        raise InputError(f"{ds_path}: the ignore label ({ignore}) must be the highest label value (nnU-Net rule).")

    rw = determine_reader_writer_from_dataset_json(dataset_json, next(iter(cases.values()))[0])()
    # 1. read and check everything before writing anything
    loaded = {}
    for case, files in cases.items():
        data, props = read_checked(rw, files)
        loaded[case] = (files, data.shape[1:], props)

    # 2. stage: copies and label maps in a hidden folder of the dataset, checked as nnU-Net would
    remove_stale_partials(raw, STAGING_NAME)
    stage = partial_folder(raw, STAGING_NAME)
    moved: List[str] = []
    ds_bytes = open(ds_path, "rb").read()
    fp_path = os.path.join(str(nnUNet_preprocessed), dataset_name, "dataset_fingerprint.json")
    fp_bytes = open(fp_path, "rb").read() if compute_fingerprint and os.path.isfile(fp_path) else None
    pre_existed = os.path.isdir(os.path.dirname(fp_path))
    try:
        os.makedirs(stage)
        staged = []  # (staged path, final path)
        for case, (files, shape, props) in loaded.items():
            cid = new_ids[case]
            images = []
            for c, f in enumerate(files):
                dst = os.path.join(stage, f"{cid}_{c:04d}{ending}")
                shutil.copy2(f, dst)
                images.append(dst)
                staged.append((dst, os.path.join(images_tr, os.path.basename(dst))))
            seg = os.path.join(stage, cid + ending)
            rw.write_seg(np.full(shape, ignore, dtype=np.uint8), seg, props)
            _check_like_nnunet(images, seg, n_channels, rw)
            staged.append((seg, os.path.join(labels_tr, cid + ending)))

        # 3. commit
        for src, dst in staged:
            os.replace(src, dst)
            moved.append(dst)
        dataset_json["labels"] = labels
        dataset_json["numTraining"] = int(dataset_json.get("numTraining", len(existing))) + len(loaded)
        dataset_json[UNLABELED_KEY] = sorted(set(dataset_json.get(UNLABELED_KEY, [])) | set(new_ids.values()))
        save_json(dataset_json, ds_path)
        if compute_fingerprint:
            labeled_only_fingerprint(dataset_name, dataset_json[UNLABELED_KEY], num_processes)
    except BaseException:
        for p in moved:  # leave the dataset as it was
            os.remove(p)
        with open(ds_path, "wb") as f:
            f.write(ds_bytes)
        if compute_fingerprint and fp_bytes is not None:
            with open(fp_path, "wb") as f:
                f.write(fp_bytes)
        elif compute_fingerprint and os.path.isfile(fp_path):
            os.remove(fp_path)
        if compute_fingerprint and not pre_existed:
            shutil.rmtree(os.path.dirname(fp_path), ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    written = sorted(new_ids.values())
    if verbose:
        print(f"Added {len(written)} unlabeled images to {raw} (label maps = ignore label {ignore}).", flush=True)
    if compute_fingerprint:
        if fp_bytes is not None:
            backup = fp_path[:-5] + f".before_unlabeled_{time.strftime('%Y%m%d_%H%M%S')}.json"
            with open(backup, "wb") as f:
                f.write(fp_bytes)
        if verbose:
            print(f"Wrote the fingerprint of the annotated images only to {fp_path}. Now run\n"
                  f"    nnUNetv2_plan_and_preprocess -d {dataset_name} --verify_dataset_integrity\n"
                  f"WITHOUT --clean, so that it keeps this fingerprint. Trainings then take these images as "
                  f"unlabeled cases of every fold, with or without a setting (-p).", flush=True)
    return written
