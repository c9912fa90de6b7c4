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

from nnunet_semicl.data.splits import UNLABELED_KEY, SplitError, load_json, save_json


def _case_files(folder: str, file_ending: str, n_channels: int) -> Dict[str, List[str]]:
    if not os.path.isdir(folder):
        raise SplitError(f"Input folder {folder} does not exist.")
    files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise SplitError(f"Input folder {folder} is empty: there are no unlabeled images to add.")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    cases: Dict[str, Dict[int, str]] = {}
    bad = []
    for f in files:
        m = pattern.match(f)
        if m is None:
            bad.append(f)
            continue
        cases.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    if bad:
        raise SplitError(f"{folder}: files not named CASE_XXXX{file_ending} (nnU-Net's image naming, XXXX = "
                         f"channel): {bad[:5]}{' ...' if len(bad) > 5 else ''}. Rename or remove them.")
    out = {}
    for case, ch in cases.items():
        missing = [c for c in range(n_channels) if c not in ch]
        extra = [c for c in ch if c >= n_channels]
        if missing or extra:
            raise SplitError(f"{folder}: case '{case}' has channels {sorted(ch)}, the dataset expects "
                             f"0..{n_channels - 1}. Missing {missing}, unexpected {extra}.")
        out[case] = [ch[c] for c in range(n_channels)]
    return out


def read_checked(rw, files: List[str]):
    """Read one case's channels with the dataset's reader; refuse NaN/Inf (named by file).

    (SimpleITK's NIfTI reader already turns NaN into 0; NRRD, MHA and others keep them.)
    """
    data, props = rw.read_images(files)
    if not np.isfinite(data).all():
        raise SplitError(f"{files}: the image contains NaN or Inf values; fix it before adding it.")
    return data, props


def labeled_only_fingerprint(dataset_name: str, unlabeled: List[str], num_processes: int = 2) -> dict:
    """nnU-Net's fingerprint of the dataset without the given (unlabeled) cases; written to preprocessed."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    fpe = DatasetFingerprintExtractor(dataset_name, num_processes=num_processes, verbose=False)
    fpe.dataset = {k: v for k, v in fpe.dataset.items() if k not in set(unlabeled)}
    if not fpe.dataset:
        raise SplitError(f"{dataset_name} has no annotated training case: nothing to plan from.")
    return fpe.run(overwrite_existing=True)


def add_unlabeled_images(dataset_name_or_id, input_folder: str, prefix: str = "", num_processes: int = 2,
                         compute_fingerprint: bool = True, verbose: bool = True) -> List[str]:
    """Copy the images of ``input_folder`` into ``imagesTr`` with all-ignore label maps; return the new ids."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_semicl.data.datasets import resolve_dataset_name

    dataset_name = resolve_dataset_name(dataset_name_or_id, need_raw=True)
    raw = os.path.join(str(nnUNet_raw), dataset_name)
    ds_path = os.path.join(raw, "dataset.json")
    dataset_json = load_json(ds_path)
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    cases = _case_files(input_folder, ending, n_channels)

    images_tr, labels_tr = os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr")
    existing = {f[: -len(ending) - 5] for f in os.listdir(images_tr) if f.endswith(ending)}
    new_ids = {case: f"{prefix}{case}" for case in cases}
    clash = sorted(i for i in new_ids.values() if i in existing)
    if clash:
        raise SplitError(f"{dataset_name} already has training cases named {clash[:5]}: pass --prefix (e.g. "
                         f"--prefix unl_) to give the unlabeled images distinct ids.")

    labels = dict(dataset_json["labels"])
    if "ignore" not in labels:
        values = [v if isinstance(v, int) else max(v) for v in labels.values()]
        labels["ignore"] = int(max(values)) + 1
    ignore = int(labels["ignore"])
    highest = max(v if isinstance(v, int) else max(v) for k, v in labels.items() if k != "ignore")
    if ignore <= highest:
        raise SplitError(f"{ds_path}: the ignore label ({ignore}) must be the highest label value (nnU-Net rule).")

    rw = determine_reader_writer_from_dataset_json(dataset_json, next(iter(cases.values()))[0])()
    # read and check everything before writing anything
    loaded = {}
    for case, files in cases.items():
        data, props = read_checked(rw, files)
        loaded[case] = (files, data.shape[1:], props)
    written = []
    try:
        for case, (files, shape, props) in loaded.items():
            cid = new_ids[case]
            for c, f in enumerate(files):
                shutil.copy2(f, os.path.join(images_tr, f"{cid}_{c:04d}{ending}"))
            rw.write_seg(np.full(shape, ignore, dtype=np.uint8), os.path.join(labels_tr, cid + ending), props)
            written.append(cid)
    except Exception:
        for cid in written:  # leave the dataset as it was
            for c in range(n_channels):
                p = os.path.join(images_tr, f"{cid}_{c:04d}{ending}")
                if os.path.isfile(p):
                    os.remove(p)
            if os.path.isfile(os.path.join(labels_tr, cid + ending)):
                os.remove(os.path.join(labels_tr, cid + ending))
        raise
    dataset_json["labels"] = labels
    dataset_json["numTraining"] = int(dataset_json.get("numTraining", len(existing))) + len(written)
    dataset_json[UNLABELED_KEY] = sorted(set(dataset_json.get(UNLABELED_KEY, [])) | set(written))
    save_json(dataset_json, ds_path)
    if verbose:
        print(f"Added {len(written)} unlabeled images to {raw} (label maps = ignore label {ignore}).", flush=True)

    if compute_fingerprint:
        pre = os.path.join(str(nnUNet_preprocessed), dataset_name)
        fp_path = os.path.join(pre, "dataset_fingerprint.json")
        old = load_json(fp_path) if os.path.isfile(fp_path) else None
        if old is not None:
            backup = fp_path[:-5] + f".before_unlabeled_{time.strftime('%Y%m%d_%H%M%S')}.json"
            shutil.copy2(fp_path, backup)
        labeled_only_fingerprint(dataset_name, dataset_json[UNLABELED_KEY], num_processes)
        if verbose:
            print(f"Wrote the fingerprint of the annotated images only to {fp_path}. Now run\n"
                  f"    nnUNetv2_plan_and_preprocess -d {dataset_name} --verify_dataset_integrity\n"
                  f"WITHOUT --clean, so that it keeps this fingerprint.", flush=True)
    return written
