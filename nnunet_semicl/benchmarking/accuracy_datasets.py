"""The datasets of ``nnunet_semicl benchmark accuracy`` (``--dataset acdc|la``): every value in which the ACDC
and the LA protocol differ, in one table (:data:`DATASETS`), and the inherited configuration they give
(:func:`reduced_configuration`). docs/performance.md section 3 gives the reason for each value.

ACDC (2D): ``convert-acdc --allow-missing`` on the SSL4MIS copy, configuration ``2d_cpu`` on the ``2d`` data.
LA (3D): ``convert-la --allow-missing --protocol dev`` on the UA-MT development copy (30 volumes; fold 0
validates on ``protocols.LA_DEV_VAL``), configuration ``3d_cpu`` inherited from ``3d_fullres`` at 1.25 mm
isotropic with its own preprocessed data.

Pure: no torch or nnU-Net import.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

#: the widths of the protocols' U-Nets before ``--feature-divisor`` / ``--max-features``: nnU-Net's base width
#: 32, doubled per stage (the 3d_fullres plans cap theirs at 320, the 2d ones at 512)
BASE_FEATURES = 32


@dataclass(frozen=True)
class AccuracyDataset:
    """One dataset's protocol: data, converter, configuration and schedule."""
    key: str                                   # the --dataset value
    title: str
    dataset_id: int
    dataset: str                               # nnU-Net's folder name
    converter: Tuple[str, ...]                 # the nnunet_semicl sub-command and its options (after -i SOURCE)
    shared_folder: str                         # the development copy in ../shared/data
    shared_marker: str                         # a folder inside it that shows the copy is there
    parent: str                                # the configuration the protocol's inherits from
    configuration: str
    spacing: Optional[float]                   # mm, every axis; None: the parent's spacing and preprocessed data
    patch_size: Tuple[int, ...]                # at the protocol's spacing
    batch_size: int                            # labeled (= unlabeled)
    strides: Optional[Tuple[Tuple[int, ...], ...]]   # per stage; None: the parent's
    epochs: int
    iterations: int
    val_iterations: int
    classes: Tuple[Tuple[str, str], ...]       # (label value, table column)
    labeled: Tuple[Tuple[str, int], ...]       # labeled units per setting
    unit: str                                  # of ``labeled``, in the table's header
    source_text: str                           # the table's legend: the data
    validation_text: str                       # the table's legend: what nnU-Net's final validation scores
    surface_metrics: bool = False              # HD95 and ASD per validation volume (medpy; the papers' LA table)

    @property
    def dim(self) -> int:
        return 3 if self.parent.startswith("3d") else 2

    def configuration_name(self, spacing: Optional[float]) -> str:
        """The protocol's configuration at its own spacing, ``2d_3mm`` / ``3d_1p5mm`` at another one."""
        if spacing is None or spacing == self.spacing:
            return self.configuration
        return f"{self.dim}d_{spacing:g}mm".replace(".", "p")


ACDC = AccuracyDataset(
    key="acdc", title="ACDC", dataset_id=27, dataset="Dataset027_ACDC", converter=("convert-acdc", "--allow-missing"),
    shared_folder="ACDC_ssl4mis", shared_marker="data", parent="2d", configuration="2d_cpu", spacing=None,
    patch_size=(128, 128), batch_size=8, strides=None, epochs=36, iterations=50, val_iterations=10,
    classes=(("1", "RV"), ("2", "MLV"), ("3", "LVC")), labeled=(("1pct", 1), ("5pct", 3), ("10pct", 7)),
    unit="pat.", source_text="ACDC, SSL4MIS copy (`convert-acdc --allow-missing`)",
    validation_text="the 20 frames (ED, ES) of the 10 validation patients")
LA = AccuracyDataset(
    key="la", title="LA", dataset_id=28, dataset="Dataset028_LA",
    converter=("convert-la", "--allow-missing", "--protocol", "dev"), shared_folder="LA_uamt",
    shared_marker="2018LA_Seg_Training Set", parent="3d_fullres", configuration="3d_cpu", spacing=1.25,
    # (z, y, x): the UA-MT crops are about 88 x 140 x 190 voxels at 0.625 mm, 44 x 70 x 95 at 1.25 mm
    patch_size=(32, 64, 64), batch_size=2,
    # z is pooled 3 times, y and x 4 times: every stage's feature map is at least 4 voxels (4 x 4 x 4 at the bottom)
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), epochs=30, iterations=50, val_iterations=10,
    classes=(("1", "left_atrium"),), labeled=(("1pct", 1), ("5pct", 4), ("10pct", 8)), unit="vol.",
    source_text="LA, UA-MT development copy (30 volumes; `convert-la --allow-missing --protocol dev`)",
    validation_text="the 5 validation volumes (`protocols.LA_DEV_VAL`, labeled by no setting) at 0.625 mm",
    surface_metrics=True)
DATASETS = {d.key: d for d in (ACDC, LA)}


def dataset_of(options: dict) -> AccuracyDataset:
    """The dataset of a run's options (reports written before ``--dataset`` existed are ACDC's)."""
    return DATASETS[options.get("dataset", "acdc")]


def network_widths(stages: int, feature_divisor: int, max_features: int) -> list:
    """16-32-64-128-256 for 5 stages with the defaults (divisor 2, at most 256)."""
    return [max(4, min(max_features, (BASE_FEATURES << i) // feature_divisor)) for i in range(stages)]


def total_strides(strides: Sequence, dim: int):
    """The product of the stages' strides per axis (a stride given as one number applies to every axis)."""
    per_axis = [list(s) if isinstance(s, (list, tuple)) else [s] * dim for s in strides]
    return [int(math.prod(axis)) for axis in zip(*per_axis)]


def reduced_configuration(plans: dict, opts: dict) -> dict:
    """The inherited configuration added to the plans (pure): the protocol's (``2d_cpu`` on the parent's data,
    ``3d_cpu`` at 1.25 mm), or at another ``spacing`` one with its own ``data_identifier`` whose patch is the
    median image rounded up to the network's total stride."""
    from nnunet_semicl.data.plans_tools import make_tiny_configuration, resolved_configuration

    ds = DATASETS[opts.get("dataset", "acdc")]
    parent = resolved_configuration(plans, ds.parent)
    n = min(int(opts["stages"]), int(parent["architecture"]["arch_kwargs"]["n_stages"]))
    strides = [list(s) for s in ds.strides] if ds.strides else parent["architecture"]["arch_kwargs"]["strides"]
    n = min(n, len(strides))
    kwargs = dict(max_stages=n, batch_size=opts["batch_size"], strides=strides[:n], kernel_size=3,
                  features_per_stage=network_widths(n, opts["feature_divisor"], opts["max_features"]))
    spacing = opts["spacing"]
    if spacing is None:
        return make_tiny_configuration(plans, ds.parent, patch_size=list(opts["patch_size"] or ds.patch_size), **kwargs)
    median = [m * p / spacing for m, p in zip(parent["median_image_size_in_voxels"], parent["spacing"])]
    total = total_strides(strides[:n], ds.dim)
    patch = opts["patch_size"] or (ds.patch_size if spacing == ds.spacing else
                                   [int(math.ceil(m / t) * t) for m, t in zip(median, total)])
    cfg = make_tiny_configuration(plans, ds.parent, patch_size=list(patch), **kwargs)
    cfg["data_identifier"] = f"nnUNetPlans_{opts['configuration']}"
    cfg["spacing"] = [float(spacing)] * ds.dim
    cfg["median_image_size_in_voxels"] = [float(round(m, 1)) for m in median]
    return cfg
