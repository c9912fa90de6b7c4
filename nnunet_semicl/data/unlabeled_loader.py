"""The unlabeled stream: nnU-Net's data loader over unlabeled cases, without any label information."""
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class nnUNetUnlabeledDataLoader(nnUNetDataLoader):
    """Uniformly random patches of unlabeled cases; the batch carries no ``target``.

    * No foreground oversampling: nnU-Net's oversampling centres crops on ``class_locations``, which
      preprocessing computed from the ground truth, so using it would leak labels.
    * With an ignore label in the dataset nnU-Net centres crops on annotated voxels; truly
      unlabeled images have none, so that is switched off too.
    * The loaded segmentation only goes through the spatial transforms (which need it) and is then
      dropped, so no code downstream can use it by accident.
    """

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                         probabilistic_oversampling=False, transforms=transforms)
        self.has_ignore = False

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch.pop("target", None)
        return batch


def weak_transforms(training_transforms: ComposeTransforms) -> ComposeTransforms:
    """The geometric part of nnU-Net's training pipeline (spatial, mirroring, masking, label cleanup).

    Random intensity transforms are left out: the teacher predicts pseudo-labels on this weak view,
    and the student's strong view gets its own photometric augmentation on the device. Deriving it
    from the trainer's own pipeline keeps any user variant of the spatial augmentation.
    """
    kept = [t for t in training_transforms.transforms if not isinstance(t, RandomTransform)]
    return ComposeTransforms(kept)
