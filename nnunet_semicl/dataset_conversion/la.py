"""LA (2018 Atrial Segmentation Challenge) -> nnU-Net raw dataset ``Dataset028_LA``, papers' protocol built in.

Usage::

    nnunet_semicl convert-la -i "/data/2018 Atrial Segmentation Challenge/Training Set"
    python -m nnunet_semicl.dataset_conversion.la -i /data/LA_uamt            # UA-MT HDF5 copy

Inputs (detected automatically, or ``--layout``); the case folders ``<ID>/`` may sit in the input
folder itself or one level below (e.g. ``2018LA_Seg_Training Set/<ID>/``):

* **challenge**: ``<ID>/lgemri.nrrd`` (LGE-MRI) and ``<ID>/laendo.nrrd`` (0 / 255 = left atrium
  cavity). The image geometry (spacing, origin, direction) is kept; the label is written on the
  image's grid as 0 / 1.
* **uamt**: ``<ID>/mri_norm2.h5`` (UA-MT / SSL4MIS copy: cropped around the atrium, z-scored
  intensities), keys ``image``/``label`` in (X, Y, Z) order, no spacing stored: ``--spacing``
  (default 0.625 mm isotropic, the challenge's resolution).

Case ids are the challenge ids. Label 1 = left atrium.

Protocol (``protocols.LA``): the UA-MT 80 training / 20 test volumes; the test volumes go to
``imagesTs`` with labels in ``labelsTs``. The protocol has no validation set (and selecting on the
test set is not allowed), so ``splits_final.json`` fold 0 validates on 8 of the 80 training volumes
(``protocols.LA_VAL``) and trains on the other 72; nnU-Net's fold ``all`` trains on all 80, exactly
the papers' training set. ``splits_semicl_{1pct,5pct,10pct}.json`` label 1 / 4 / 8 volumes.
``--cv`` makes a 5-fold cross-validation over the 80 training volumes instead. ``--protocol dev``
(``protocols.LA_DEV``, for the 30-volume development copy with ``--allow-missing``): fold 0 validates on
``protocols.LA_DEV_VAL`` = every fifth of the first 30 ids of ``train.list`` from the tenth on (5
volumes; ``LA_VAL`` has only 3 of them), settings and test set unchanged.
"""
import os
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.dataset_conversion.cases import raise_if_problems
from nnunet_semicl.dataset_conversion.converter_cli import ConverterCommand
from nnunet_semicl.dataset_conversion.pipeline import DatasetSpec, convert_dataset
from nnunet_semicl.dataset_conversion.protocols import LA, LA_DEV, Protocol
from nnunet_semicl.errors import ConversionError

DEFAULT_ID = 28
DEFAULT_NAME = "LA"
LABELS = {"background": 0, "left_atrium": 1}
#: UA-MT's mri_norm2.h5 stores no spacing; the challenge data are 0.625 mm isotropic
DEFAULT_UAMT_SPACING = (0.625, 0.625, 0.625)
IMAGE_NRRD, LABEL_NRRD, UAMT_H5 = "lgemri.nrrd", "laendo.nrrd", "mri_norm2.h5"


def _case_roots(root: str) -> List[str]:
    """The input folder and its immediate subfolders (``Training Set``, ``2018LA_Seg_Training Set``, ...)."""
    if not os.path.isdir(root):
        raise ConversionError(f"Input folder {root} does not exist.")
    subs = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return [root] + subs


def _case_dir(roots: Sequence[str], case: str) -> Optional[str]:
    return next((os.path.join(r, case) for r in roots if os.path.isdir(os.path.join(r, case))), None)


def detect_layout(root: str) -> str:
    roots = _case_roots(root)
    n_nrrd = n_h5 = 0
    for r in roots:
        for d in os.listdir(r):
            p = os.path.join(r, d)
            if os.path.isdir(p):
                n_nrrd += os.path.isfile(os.path.join(p, IMAGE_NRRD))
                n_h5 += os.path.isfile(os.path.join(p, UAMT_H5))
    if n_nrrd:
        return "challenge"
    if n_h5:
        return "uamt"
    raise ConversionError(f"No LA data found in {root}: expected case folders <ID>/ with {IMAGE_NRRD} and {LABEL_NRRD} "
                          f"(challenge release) or {UAMT_H5} (UA-MT copy), in the input folder or one level below "
                          f"(e.g. '2018LA_Seg_Training Set/<ID>/').")


def locate(root: str, cases: Sequence[str], layout: str) -> Tuple[Dict[str, dict], List[str]]:
    roots = _case_roots(root)
    found, missing, problems = {}, [], []
    for case in cases:
        d = _case_dir(roots, case)
        if d is None:
            missing.append(case)
            continue
        if layout == "challenge":
            image, label = os.path.join(d, IMAGE_NRRD), os.path.join(d, LABEL_NRRD)
            if not os.path.isfile(image):
                problems.append(f"{case}: missing image {image}.")
            elif not os.path.isfile(label):
                problems.append(f"{case}: missing ground truth {label}. Every protocol volume needs its "
                                f"{LABEL_NRRD}; restore it from the challenge release.")
            else:
                found[case] = {"kind": "sitk", "image": image, "label": label, "label_map": {255: 1},
                               "allowed": (0, 255),
                               "hint": f"The challenge's {LABEL_NRRD} holds 0 (background) and 255 (left atrium)."}
        else:
            h5 = os.path.join(d, UAMT_H5)
            if not os.path.isfile(h5):
                problems.append(f"{case}: missing {h5} (the folder exists but holds {sorted(os.listdir(d))}).")
            else:
                found[case] = {"kind": "h5", "file": h5, "axes": "xyz", "allowed": (0, 1),
                               "hint": "UA-MT's mri_norm2.h5 labels hold 0 (background) and 1 (left atrium)."}
    raise_if_problems(root, problems)
    return found, missing


def _dataset_text(layout: str) -> Dict[str, str]:
    """dataset.json texts; the description says when the input was the cropped, z-scored UA-MT copy."""
    return {
        "description": "2018 Atrial Segmentation Challenge LGE-MRI, left atrium cavity; converted by nnunet_semicl "
                       "with the UA-MT 80/20 protocol"
                       + (" from the UA-MT mri_norm2.h5 copy (cropped, z-scored)" if layout == "uamt" else ""),
        "reference": "Xiong et al., A global benchmark of algorithms for segmenting the left atrium from late "
                     "gadolinium-enhanced cardiac MR, Medical Image Analysis 67, 2021; Yu et al., UA-MT, MICCAI 2019",
        "licence": "2018 Atrial Segmentation Challenge data terms: research use; cite the references above",
    }


SPEC = DatasetSpec(
    title="LA", module="nnunet_semicl.dataset_conversion.la", unit="volume", labeled_units="volumes",
    default_id=DEFAULT_ID, default_name=DEFAULT_NAME,
    locate={layout: partial(locate, layout=layout) for layout in ("challenge", "uamt")}, detect_layout=detect_layout,
    hdf5_layout="uamt", default_spacing=DEFAULT_UAMT_SPACING, isotropic_spacing=True,
    spacing_note="assumed: mri_norm2.h5 stores no spacing",
    channel_name="MRI", labels=LABELS, dataset_text=_dataset_text,
    # UA-MT's train.list holds our training and validation volumes (the protocol has no validation set)
    list_files=(("train.list", ("train", "val")), ("test.list", ("test",))),
    list_layouts=("challenge", "uamt"), list_entry_ending="", methods_section="methods.md 7.2",
    next_steps_configs="3d_fullres",
    info_after_protocol={"validation_note": "fold 0 validates on protocols.LA_VAL (8 training volumes); fold 'all' = "
                                            "all 80"},
)


def convert_la(input_dir: str, raw: Optional[str] = None, preprocessed: Optional[str] = None,
               dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME, layout: str = "auto",
               spacing: Optional[Sequence[float]] = None, cv_folds: Optional[int] = None,
               allow_missing: bool = False, num_processes: int = 1, overwrite: bool = False,
               verbose: bool = True, protocol: Protocol = LA, created_by: str = "") -> dict:
    """Convert LA; return a summary (dataset folder, case counts, split files, skipped settings)."""
    return convert_dataset(SPEC, protocol, input_dir, raw, preprocessed, dataset_id, name, layout, spacing, cv_folds,
                           allow_missing, num_processes, overwrite, verbose, created_by)


COMMAND = ConverterCommand(
    name="convert-la", spec=SPEC, convert=convert_la, description=__doc__,
    input_help="folder with the <ID>/ case folders (or one level above)",
    spacing_help="spacing in mm assumed for mri_norm2.h5: one value (isotropic) or Z Y X (default 0.625)",
    cv_help="nnU-Net-style K-fold cross-validation (default K=5) over the 80 training volumes instead of fold 0 "
            "= 72 train / 8 validation; settings are made per fold",
    protocols=(("dev", LA_DEV, "the development copy's fold 0 (the first 30 ids of train.list, with "
                               "--allow-missing): validation on protocols.LA_DEV_VAL, 5 volumes that no setting "
                               "labels, instead of LA_VAL (3 of them present); settings and test set unchanged"),))
# the functions every nnunet_semicl sub-command module has (cli.EXTERNAL_COMMANDS), and python -m
add_arguments, run, main = COMMAND.add_arguments, COMMAND.run, COMMAND.main


if __name__ == "__main__":
    main()
