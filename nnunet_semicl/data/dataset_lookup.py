"""Finding an nnU-Net dataset by id or name, with errors that say what to do."""
import os

from nnunet_semicl.errors import InputError

_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def require_paths(*names: str) -> None:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise InputError(f"Environment variable(s) {missing} not set. nnU-Net needs nnUNet_raw, nnUNet_preprocessed "
                         f"and nnUNet_results, e.g. `export nnUNet_raw=/data/nnUNet_raw` (see nnU-Net's "
                         f"documentation/setting_up_paths.md).")


def resolve_dataset_name(dataset_name_or_id, need_raw: bool = False, need_preprocessed: bool = False) -> str:
    """``27``, ``'027'`` or ``'Dataset027_ACDC'`` -> ``'Dataset027_ACDC'`` (must exist where needed)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    needed = (["nnUNet_raw"] if need_raw else []) + (["nnUNet_preprocessed"] if need_preprocessed else [])
    require_paths(*needed)
    s = str(dataset_name_or_id)
    if s.startswith("Dataset"):
        name = s
    else:
        try:
            did = int(s)
        except ValueError:
            raise InputError(f"'{s}' is neither a dataset id (e.g. 27) nor a name like Dataset027_ACDC.") from None
        try:
            name = convert_id_to_dataset_name(did)
        except RuntimeError:
            where = {v: os.environ.get(v) for v in _PATH_VARS}
            raise InputError(f"No dataset with id {did} (Dataset{did:03d}_*) in {where}. Check the id, or create/"
                             f"convert the dataset first.") from None
    for var, need in (("nnUNet_raw", need_raw), ("nnUNet_preprocessed", need_preprocessed)):
        if need and not os.path.isdir(os.path.join(os.environ[var], name)):
            hint = ("run nnUNetv2_plan_and_preprocess first" if var == "nnUNet_preprocessed"
                    else "convert or create the dataset first")
            raise InputError(f"{os.path.join(os.environ[var], name)} does not exist: {hint}.")
    return name


#: what our commands read from a dataset.json, and what each key is (for the error message)
DATASET_JSON_KEYS = {"file_ending": 'the image file ending, e.g. "file_ending": ".nii.gz"',
                     "labels": 'the label values, e.g. "labels": {"background": 0, "tumour": 1}',
                     "channel_names": 'the input channels, e.g. "channel_names": {"0": "MRI"}'}


def check_dataset_json(dataset_json, path: str, keys=("file_ending", "labels")) -> dict:
    """Refuse a dataset.json that lacks a key a command needs, naming the file and the key (not a KeyError)."""
    if not isinstance(dataset_json, dict):
        raise InputError(f"{path} is not a JSON object (nnU-Net's dataset.json format).")
    missing = [k for k in keys if k not in dataset_json]
    if missing:
        raise InputError(f"{path} lacks {', '.join(repr(k) for k in missing)} (" +
                         "; ".join(DATASET_JSON_KEYS.get(k, k) for k in missing) +
                         "). Add it (nnU-Net's documentation/dataset_format.md), then run the command again.")
    labels = dataset_json.get("labels")
    if "labels" in keys and (not isinstance(labels, dict) or not labels):
        raise InputError(f"{path}: 'labels' must be a non-empty mapping of names to label values, got {labels!r}.")
    return dataset_json
