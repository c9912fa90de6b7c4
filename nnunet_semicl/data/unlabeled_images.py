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
from typing import Dict, List, Optional

import numpy as np

from nnunet_semicl.data.splits import UNLABELED_KEY
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import incomplete_file_problem, load_json, save_json


#: a ``--prefix``: plain case-id characters only (no path separators, no '..', no spaces)
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]*$")
#: a case id taken from an input file name
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def raw_nonfinite_problem(path: str):
    """NaN/Inf in the voxel data as stored: SimpleITK's NIfTI reader turns NaN and Inf into 0 before any check
    could see them, so NIfTI files are read raw with nibabel (other formats keep NaN/Inf for the reader)."""
    name = path.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    import nibabel as nib

    try:
        img = nib.load(path)
        if not np.issubdtype(img.get_data_dtype(), np.floating):
            return None
        data = np.asarray(img.dataobj.get_unscaled())
    except Exception:  # the dataset's reader reports unreadable files
        return None
    bad = ~np.isfinite(data)
    if bad.any():
        return f"{int(np.isnan(data).sum())} NaN and {int(np.isinf(data).sum())} Inf voxel(s) of {data.size}"
    return None


def read_checked(rw, files: List[str]):
    """Read one case's channels with the dataset's reader; refuse what nnU-Net could not use, naming the file:
    incomplete (truncated) files, unreadable files, files with more than one channel, NaN/Inf.

    (SimpleITK's NIfTI reader turns NaN/Inf into 0: NIfTI voxels are checked raw first, see
    :func:`raw_nonfinite_problem`; NRRD, MHA and others keep them for the check after reading.)
    """
    for f in files:
        problem = incomplete_file_problem(f)
        if problem:
            raise InputError(f"{f}: {problem}. The file is truncated or damaged; copy it again.")
    for f in files:
        problem = raw_nonfinite_problem(f)
        if problem:
            raise InputError(f"{f}: the image contains NaN or Inf values ({problem}); fix it before adding it.")
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


def labeled_only_fingerprint(dataset_name: str, unlabeled: List[str], num_processes: int = 2,
                             output_root: Optional[str] = None) -> dict:
    """nnU-Net's fingerprint of the dataset without the given (unlabeled) cases; written to
    ``<output_root or nnUNet_preprocessed>/<dataset>/dataset_fingerprint.json``."""
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor as fe

    fpe = fe.DatasetFingerprintExtractor(dataset_name, num_processes=num_processes, verbose=False)
    fpe.dataset = {k: v for k, v in fpe.dataset.items() if k not in set(unlabeled)}
    if not fpe.dataset:
        raise InputError(f"{dataset_name} has no annotated training case: nothing to plan from.")
    old = fe.nnUNet_preprocessed
    fe.nnUNet_preprocessed = output_root or old  # run() writes to its module's nnUNet_preprocessed
    try:
        return fpe.run(overwrite_existing=True)
    finally:
        fe.nnUNet_preprocessed = old


def add_unlabeled_images(dataset_name_or_id, input_folder: str, prefix: str = "", num_processes: int = 2,
                         compute_fingerprint: bool = True, verbose: bool = True) -> List[str]:
    """Copy the images of ``input_folder`` into ``imagesTr`` with all-ignore label maps; return the new ids.

    Everything is checked (names, channels, NaN/Inf, duplicates of images already in the dataset), then
    staged and checked again as nnU-Net would, under the dataset's lock, before the dataset is touched;
    the files, the fingerprint and ``dataset.json`` then change together
    (:class:`~nnunet_semicl.dataset_change.DatasetChange`: a SIGKILL at any instant leaves the dataset as it
    was or, at the next command, complete).
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_semicl.data.dataset_lookup import check_dataset_json, resolve_dataset_name
    from nnunet_semicl.dataset_change import DatasetChange
    from nnunet_semicl.files import check_writable

    check_prefix(prefix)
    dataset_name = resolve_dataset_name(dataset_name_or_id, need_raw=True)
    if not nnUNet_preprocessed:
        raise InputError("nnUNet_preprocessed is not set: add-unlabeled writes the dataset's fingerprint there.")
    # refused before the lock is taken or anything is written (not a rollback with chained tracebacks)
    raw = os.path.join(str(nnUNet_raw), dataset_name)
    check_dataset_json(load_json(os.path.join(raw, "dataset.json")), os.path.join(raw, "dataset.json"))
    for sub in ("", "imagesTr", "labelsTr"):
        check_writable(os.path.join(raw, sub), "add-unlabeled writes dataset.json and the new cases there")
    if compute_fingerprint:
        check_writable(os.path.join(str(nnUNet_preprocessed), dataset_name),
                       "add-unlabeled writes the fingerprint there")
    command = f"add-unlabeled {dataset_name} -i {os.path.abspath(input_folder)} --prefix '{prefix}'"
    # (an interrupted run of the same command is completed by DatasetChange; nothing more to do then)
    with DatasetChange(dataset_name, str(nnUNet_preprocessed), [str(nnUNet_raw)], command, verbose) as change:
        if change.resumed:
            return sorted(load_json(os.path.join(str(nnUNet_raw), dataset_name, "dataset.json")).get(UNLABELED_KEY,
                                                                                                       []))
        return _add(change, dataset_name, input_folder, prefix, num_processes, compute_fingerprint, verbose)


def _add(change, dataset_name: str, input_folder: str, prefix: str, num_processes: int, compute_fingerprint: bool,
         verbose: bool) -> List[str]:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_semicl.data.duplicates import content_hash, find_duplicates, image_files

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
    loaded, hashes = {}, {}
    for case, files in cases.items():
        data, props = read_checked(rw, files)
        loaded[case] = (files, data.shape[1:], props)
        hashes.update({f: content_hash(data[c], props["spacing"]) for c, f in enumerate(files)})
    dups = find_duplicates(rw, hashes, image_files([images_tr, os.path.join(raw, "imagesTs")], ending))
    if dups:
        raise InputError(f"{len(dups)} image(s) of {input_folder} have the same voxels and spacing as an image "
                         f"already in {dataset_name} (or in the input): "
                         + "; ".join(f"{a} = {b}" if a != b else f"{a} (a file of the dataset itself)"
                                     for a, b in dups[:5]) + (" ..." if len(dups) > 5 else "")
                         + ". A scan must not enter training twice: remove them from the input folder.")

    # 2. the fingerprint of the annotated images (the new ones are not in imagesTr yet), into the staging folder
    fp_path = os.path.join(str(nnUNet_preprocessed), dataset_name, "dataset_fingerprint.json")
    unlabeled = sorted(set(dataset_json.get(UNLABELED_KEY, [])) | set(new_ids.values()))
    if compute_fingerprint:
        scratch = change.scratch("fingerprint")
        labeled_only_fingerprint(dataset_name, unlabeled, num_processes, output_root=scratch)
        os.replace(os.path.join(scratch, dataset_name, "dataset_fingerprint.json"), change.stage(fp_path))
        if os.path.isfile(fp_path):
            backup = fp_path[:-5] + f".before_unlabeled_{time.strftime('%Y%m%d_%H%M%S')}.json"
            shutil.copy2(fp_path, change.stage(backup))

    # 3. stage: copies and label maps, checked as nnU-Net would; then dataset.json
    for case, (files, shape, props) in loaded.items():
        cid = new_ids[case]
        images = []
        for c, f in enumerate(files):
            dst = change.stage(os.path.join(images_tr, f"{cid}_{c:04d}{ending}"))
            shutil.copy2(f, dst)
            images.append(dst)
        seg = change.stage(os.path.join(labels_tr, cid + ending))
        rw.write_seg(np.full(shape, ignore, dtype=np.uint8), seg, props)
        _check_like_nnunet(images, seg, n_channels, rw)
    dataset_json["labels"] = labels
    dataset_json["numTraining"] = int(dataset_json.get("numTraining", len(existing))) + len(loaded)
    dataset_json[UNLABELED_KEY] = unlabeled
    save_json(dataset_json, ds_path)   # staged: the change moves everything in when it commits

    written = sorted(new_ids.values())
    if verbose:
        print(f"Adding {len(written)} unlabeled images to {raw} (label maps = ignore label {ignore}).", flush=True)
    if compute_fingerprint and verbose:
        print(f"Writing the fingerprint of the annotated images only to {fp_path}. Now run\n"
              f"    nnUNetv2_plan_and_preprocess -d {dataset_name} --verify_dataset_integrity\n"
              f"WITHOUT --clean, so that it keeps this fingerprint. Trainings then take these images as "
              f"unlabeled cases of every fold, with or without a setting (-p).", flush=True)
    return written
