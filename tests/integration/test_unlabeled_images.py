"""Images without annotation: added with ``nnunet_semicl add-unlabeled``, planned by stock nnU-Net."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semicl.data.splits import UNLABELED_KEY
from nnunet_semicl.errors import InputError
from nnunet_semicl.data.unlabeled_images import add_unlabeled_images, labeled_only_fingerprint, read_checked
from nnunet_semicl.dataset_conversion.synthetic import PhantomSpec, generate_dataset, write_phantom_images
from tests.conftest import TRAIN_ENV, run_cmd
from tests.integration.nnunet_helpers import env, make_trainer

pytestmark = pytest.mark.integration
NAME = "Dataset991_SemiCLPhantom2D"


def _listing(raw):
    return sorted(os.listdir(os.path.join(raw, "imagesTr"))), sorted(os.listdir(os.path.join(raw, "labelsTr")))


def test_add_unlabeled_images_keeps_fingerprint_and_feeds_the_unlabeled_stream(nnunet_dirs, tmp_path):
    raw = generate_dataset(nnunet_dirs.raw, 991, name="SemiCLPhantom2D", n_patients=6, n_test_patients=0, dim=2,
                           verbose=False)
    before = labeled_only_fingerprint(NAME, [], num_processes=1)   # what nnU-Net computes without them
    unl = tmp_path / "unlabeled"
    write_phantom_images(str(unl), [50, 51, 52], PhantomSpec(shape=(1, 64, 64)), seed=7)
    for f in os.listdir(unl):  # make them very different in intensity: they must not change the fingerprint
        im = sitk.ReadImage(str(unl / f))
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(im) * 5.0 + 1000.0)
        out.CopyInformation(im)
        sitk.WriteImage(out, str(unl / f))

    # bad input: clear errors, nothing written
    listing = _listing(raw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        add_unlabeled_images(991, str(tmp_path / "empty"))
    bad = tmp_path / "badname"
    bad.mkdir()
    (bad / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="scan.nii.gz"):
        add_unlabeled_images(991, str(bad))
    clash = tmp_path / "clash"
    clash.mkdir()
    os.link(os.path.join(raw, "imagesTr", "phantom000_frame01_0000.nii.gz"), clash / "phantom000_frame01_0000.nii.gz")
    with pytest.raises(InputError, match="--prefix"):
        add_unlabeled_images(991, str(clash))
    missing_channel = tmp_path / "channels"
    missing_channel.mkdir()
    os.link(os.path.join(raw, "imagesTr", "phantom000_frame01_0000.nii.gz"), missing_channel / "a_0001.nii.gz")
    with pytest.raises(InputError, match="Missing \\[0\\]"):
        add_unlabeled_images(991, str(missing_channel))
    with pytest.raises(InputError, match="No dataset with id 996"):
        add_unlabeled_images(996, str(unl))
    assert _listing(raw) == listing

    new = add_unlabeled_images(991, str(unl), prefix="unl_", num_processes=1, verbose=False)
    assert sorted(new) == sorted(f"unl_phantom{p:03d}_frame{f:02d}" for p in (50, 51, 52) for f in (1, 2))
    ds = json.load(open(os.path.join(raw, "dataset.json")))
    assert ds["labels"]["ignore"] == 4 and ds[UNLABELED_KEY] == sorted(new) and ds["numTraining"] == 18
    seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTr", new[0] + ".nii.gz")))
    assert np.all(seg == 4)

    fp_path = os.path.join(nnunet_dirs.preprocessed, NAME, "dataset_fingerprint.json")
    after = json.load(open(fp_path))
    assert after == json.loads(json.dumps(before))  # identical to the annotated dataset's fingerprint
    # why this matters: nnU-Net's own analysis counts every voxel of an all-ignore image as foreground
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    fg = DatasetFingerprintExtractor.analyze_case([os.path.join(raw, "imagesTr", new[0] + "_0000.nii.gz")],
                                                  os.path.join(raw, "labelsTr", new[0] + ".nii.gz"), SimpleITKIO,
                                                  100)[2]
    assert len(fg[0]) == 100 and np.mean(fg[0]) > 1000  # a --clean re-fingerprint would be distorted

    # stock planning accepts the dataset (all-ignore label maps) and keeps the fingerprint
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "2d", "-npfp", "1", "-np", "1",
             "--verify_dataset_integrity"])
    assert json.load(open(fp_path)) == after
    run_cmd(["nnunet_semicl", "tiny-config", "991", "-c", "2d"])   # the installed console script itself

    # no -p needed: the trainer takes the images without annotation as the unlabeled stream
    with env(**TRAIN_ENV):
        t = make_trainer(991, "2d_tiny", 0, "nnUNetTrainerPseudoLabel", "nnUNetPlans")
        t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 1, 2, 1
        t.disable_checkpointing = True
        t.run_training()
    assert set(t.case_sets.unlabeled) == set(new) and not set(t.case_sets.labeled) & set(new)
    folds = json.load(open(os.path.join(nnunet_dirs.preprocessed, NAME, "splits_final.json")))
    for f in folds:
        assert set(new) <= set(f["train"]) and not set(new) & set(f["val"])


def test_nan_images_are_refused_with_their_file_name(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    arr = np.zeros((1, 8, 8), np.float32)
    arr[0, 0, 0] = np.nan
    path = str(tmp_path / "scan_0000.nrrd")  # NRRD keeps NaN (SimpleITK's NIfTI reader zeroes them)
    sitk.WriteImage(sitk.GetImageFromArray(arr), path)
    with pytest.raises(InputError, match="scan_0000.nrrd.*NaN"):
        read_checked(SimpleITKIO(), [path])
