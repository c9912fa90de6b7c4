"""The conversion pipeline shared by the ACDC and LA converters.

* :class:`DatasetSpec`: what differs between the converters (layouts and their locate functions,
  labels, texts); :func:`convert_dataset` does the rest: checks, folds and settings, staging, the
  worker pool, ``dataset.json``, ``conversion_info.json`` and the split files.
* :func:`run_tasks`: runs :func:`~nnunet_semicl.dataset_conversion.cases.convert_case` in a ``spawn``
  pool (``-np``) with a tqdm progress bar.
* staging: the dataset and its split files are written under the dataset's lock into the staging folders
  of a :class:`~nnunet_semicl.dataset_change.DatasetChange` and moved into place only when every case
  converted, so a failed (or killed) conversion leaves nothing half-written.
* output folders, the ``--overwrite`` rule, dataset-id clashes, ``splits_final.json`` and the
  labeled-setting files (through :mod:`nnunet_semicl.data.splits`).

Heavy imports (tqdm, multiprocessing) happen inside functions: the command-line help must stay fast.
"""
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nnunet_semicl.dataset_change import DatasetChange
from nnunet_semicl.dataset_conversion.cases import convert_case, read_id_list
from nnunet_semicl.dataset_conversion.protocols import Protocol, make_folds, make_settings
from nnunet_semicl.errors import ConversionError, short_list
from nnunet_semicl.files import remove_path, remove_stale_partials, save_json


def log(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(msg, flush=True)


def output_roots(raw: Optional[str], preprocessed: Optional[str]) -> Tuple[str, str]:
    """``--raw`` / ``--preprocessed`` or the nnU-Net environment variables."""
    raw = raw or os.environ.get("nnUNet_raw")
    preprocessed = preprocessed or os.environ.get("nnUNet_preprocessed")
    missing = [n for n, v in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed)) if not v]
    if missing:
        raise ConversionError(f"Environment variable(s) {missing} not set (or pass --raw / --preprocessed). The raw "
                              f"dataset goes to $nnUNet_raw and the split files to $nnUNet_preprocessed/<Dataset>/, "
                              f"e.g. `export nnUNet_raw=/data/nnUNet_raw`.")
    return os.path.abspath(raw), os.path.abspath(preprocessed)


def check_dataset_id_free(dataset_name: str, roots: Sequence[Optional[str]]) -> None:
    """nnU-Net resolves ids by folder prefix: another ``DatasetXXX_*`` with our id would make it ambiguous."""
    prefix = dataset_name[:len("Dataset000")]
    clashes = []
    for r in roots:
        if r and os.path.isdir(r):
            clashes += [os.path.join(r, d) for d in os.listdir(r)
                        if d.startswith(prefix) and d != dataset_name and os.path.isdir(os.path.join(r, d))]
    if clashes:
        raise ConversionError(f"Dataset id {int(prefix[7:])} is already used by {short_list(clashes)}. nnU-Net "
                              f"needs ids to be unique: pass another --id, or remove that dataset.")


# ------------------------------------------------------------------------------------------------
# the worker pool
# ------------------------------------------------------------------------------------------------
def _safe_convert(task: dict):
    """Pool wrapper: return the error instead of raising, so the parent reports the case cleanly."""
    try:
        return True, convert_case(task)
    except ConversionError as e:
        return False, str(e)
    except Exception as e:  # unexpected: keep the case in the message
        return False, f"case {task.get('case')}: {type(e).__name__}: {e}"


def run_tasks(tasks: List[dict], num_processes: int, desc: str, verbose: bool = True) -> List[dict]:
    """Convert every task (serially for ``num_processes <= 1``), stop at the first error."""
    from tqdm import tqdm

    results = []
    bar = tqdm(total=len(tasks), desc=desc, unit="case", disable=not verbose, file=sys.stdout)
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for t in tasks:
                ok, res = _safe_convert(t)
                if not ok:
                    raise ConversionError(res)
                results.append(res)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: the parent may hold threads (ITK, torch) that a forked child would inherit
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
                for ok, res in pool.imap_unordered(_safe_convert, tasks):
                    if not ok:
                        pool.terminate()
                        raise ConversionError(res)
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    return sorted(results, key=lambda r: r["case"])


# ------------------------------------------------------------------------------------------------
# dataset folders and split files
# ------------------------------------------------------------------------------------------------
def make_task_paths(stage: str, case: str, role: str, file_ending: str = ".nii.gz") -> Dict[str, str]:
    img_dir, lab_dir = ("imagesTs", "labelsTs") if role == "test" else ("imagesTr", "labelsTr")
    return {"out_image": os.path.join(stage, img_dir, f"{case}_0000{file_ending}"),
            "out_label": os.path.join(stage, lab_dir, f"{case}{file_ending}")}


def make_dataset_dirs(stage: str, with_test: bool) -> None:
    for d in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if with_test else ()):
        os.makedirs(os.path.join(stage, d), exist_ok=True)


def plan_split_files(prep_base: str, folds: List[dict], settings: List[dict], overwrite: bool,
                     skipped: Sequence[str] = (), default: Optional[dict] = None) -> None:
    """Refuse early (before converting anything) when split files with other content are in the way.

    ``skipped``: settings of the protocol that this conversion does not write; an existing file of one
    of them is stale (it would describe other cases) and is in the way too.
    """
    from nnunet_semicl.data.setting_files import differs_from_file
    from nnunet_semicl.data.splits import DEFAULT_SETTING_FILE, split_file_name

    if overwrite:
        return
    wanted = {"splits_final.json": folds}
    wanted.update({split_file_name(s["setting"]): s for s in settings})
    if default is not None:
        wanted[DEFAULT_SETTING_FILE] = default
    for fname, content in wanted.items():
        path = os.path.join(prep_base, fname)
        if differs_from_file(path, content):
            raise FileExistsError(f"{path} already exists with different content (another split or protocol). "
                                  f"Pass --overwrite to replace the split files, or choose another --id.")
    for name in skipped:
        path = os.path.join(prep_base, split_file_name(name))
        if os.path.isfile(path):
            raise FileExistsError(f"{path} exists from an earlier conversion, but this conversion cannot make the "
                                  f"setting '{name}'. Pass --overwrite to remove it, or choose another --id.")


def write_split_files(prep_base: str, folds: List[dict], settings: List[dict], overwrite: bool,
                      skipped: Sequence[str] = (), default: Optional[dict] = None) -> List[str]:
    from nnunet_semicl.data.setting_files import write_default_setting, write_split_file
    from nnunet_semicl.data.splits import DEFAULT_SETTING_FILE, split_file_name

    for name in skipped:  # stale files of settings this conversion cannot make (only with --overwrite)
        path = os.path.join(prep_base, split_file_name(name))
        if os.path.isfile(path):
            remove_path(path)
    path = os.path.join(prep_base, "splits_final.json")
    save_json(folds, path)
    written = [path]
    for s in settings:
        written.append(write_split_file(prep_base, s, overwrite=overwrite))
    if default is not None:
        written.append(write_default_setting(prep_base, default, overwrite=overwrite))
    elif overwrite and os.path.isfile(os.path.join(prep_base, DEFAULT_SETTING_FILE)):
        remove_path(os.path.join(prep_base, DEFAULT_SETTING_FILE))  # names a setting this conversion did not make
    return written


def note_stale_preprocessing(prep_base: str, overwrite: bool, verbose: bool) -> None:
    """After --overwrite, an earlier fingerprint/plans would be reused by nnU-Net unless --clean is given."""
    if overwrite and os.path.isfile(os.path.join(prep_base, "dataset_fingerprint.json")):
        log(f"NOTE: {prep_base} holds a fingerprint and plans of the previous conversion; run "
            f"nnUNetv2_plan_and_preprocess with --clean so that they are recomputed.", verbose)


def next_steps(dataset_id: int, dataset_name: str, configs: str, settings: List[str],
               default: Optional[str] = None) -> str:
    s = settings[1] if len(settings) > 1 else (settings[0] if settings else None)
    lines = ["Next steps:",
             f"  nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configs} --verify_dataset_integrity",
             f"  nnunet_semicl sync-plans {dataset_id}"]
    if default:
        lines.append(f"  nnUNetv2_train {dataset_id} {configs.split()[0]} 0 -tr nnUNetTrainerACTIONpp   "
                     f"(the default setting, {default})")
    if s:
        lines.append(f"  nnUNetv2_train {dataset_id} {configs.split()[0]} 0 -p nnUNetPlans_{s} -tr <trainer>")
    return "\n".join(lines)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return round(time.time() - self.t0, 2)


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
#: ``locate(input folder, case ids)`` -> ({case id: worker-task keys of its source files}, absent case ids)
Locate = Callable[[str, Sequence[str]], Tuple[Dict[str, dict], List[str]]]


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the ACDC and LA converters; :func:`convert_dataset` does the rest."""
    title: str                                    # "ACDC": log lines and the progress bar
    module: str                                   # the converter, recorded in conversion_info.json
    unit: str                                     # what one case is called in messages: "case" / "volume"
    labeled_units: str                            # what a setting labels: "patients" / "volumes"
    default_id: int
    default_name: str
    locate: Dict[str, Locate]                     # per input layout, in the order messages name the layouts
    detect_layout: Callable[[str], str]           # input folder -> layout (raises when there is no data)
    hdf5_layout: str                              # the layout whose files store no spacing (--spacing applies)
    default_spacing: Tuple[float, float, float]   # (z, y, x) mm assumed for it
    isotropic_spacing: bool                       # --spacing may also be one value, for z, y and x
    spacing_note: str                             # conversion_info.json: why the spacing is assumed
    channel_name: str
    labels: Dict[str, int]
    dataset_text: Callable[[str], Dict[str, str]]  # layout -> dataset.json description, reference, licence
    list_files: Tuple[Tuple[str, Tuple[str, ...]], ...]  # the input's own *.list files, the roles each lists
    list_layouts: Tuple[str, ...]                 # the layouts that come with such list files
    list_entry_ending: str                        # removed from list entries (SSL4MIS lists may name files)
    methods_section: str                          # where the protocol is specified: "methods.md 7.1"
    next_steps_configs: str                       # the nnU-Net configurations to plan
    task_defaults: Dict[str, object] = field(default_factory=dict)  # worker-task keys the located sources lack
    case_info_keys: Tuple[str, ...] = ()          # source keys recorded per case in conversion_info.json
    # dataset notes in conversion_info.json, each where it has always stood in the file
    info_after_spacing: Dict[str, str] = field(default_factory=dict)
    info_after_protocol: Dict[str, str] = field(default_factory=dict)


def assumed_spacing(spacing: Optional[Sequence[float]], spec: DatasetSpec) -> Tuple[float, ...]:
    """``--spacing`` (or the dataset's default) as (z, y, x) mm; checked even where the files carry their own."""
    spacing = tuple(float(s) for s in (spacing or spec.default_spacing))
    if spec.isotropic_spacing and len(spacing) == 1:
        spacing = spacing * 3
    if len(spacing) != 3 or min(spacing) <= 0:
        counts = "one or three" if spec.isotropic_spacing else "three"
        raise ConversionError(f"--spacing needs {counts} positive values (z y x, mm), got {spacing}.")
    return spacing


def compare_input_lists(root: str, protocol: Protocol, spec: DatasetSpec, verbose: bool) -> List[str]:
    """Warn when the input's own ``*.list`` files disagree with the built-in protocol (which is used)."""
    notes = []
    for fname, roles in spec.list_files:
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            continue
        listed = set(read_id_list(path, spec.list_entry_ending))
        expected = set(protocol.cases_of(g for r in roles for g in getattr(protocol, r)))
        if listed != expected:
            notes.append(f"{path} differs from the built-in protocol ({len(listed - expected)} extra, "
                         f"{len(expected - listed)} absent ids); the built-in lists ({spec.methods_section}) are "
                         f"used.")
    for n in notes:
        log(f"WARNING: {n}", verbose)
    return notes


def check_missing(missing: List[str], protocol: Protocol, spec: DatasetSpec, input_dir: str, allow_missing: bool,
                  verbose: bool) -> None:
    """Protocol cases absent from the input: an error, or with ``--allow-missing`` a warning."""
    unit = spec.unit
    if missing and not allow_missing:
        by_role = {r: [c for c in missing if protocol.role_of(protocol.group_of(c)) == r]
                   for r in ("train", "val", "test")}
        detail = "; ".join(f"{r}: {short_list(v)}" for r, v in by_role.items() if v)
        raise ConversionError(f"{len(missing)} {unit}(s) of the protocol are not in {input_dir} ({detail}). Supply "
                              f"the complete dataset, or pass --allow-missing to convert the {unit}s that are present "
                              f"(the split files then cover only those; settings whose labeled {spec.labeled_units} "
                              f"are absent are skipped).")
    if missing:
        log(f"WARNING: {len(missing)} protocol {unit}(s) absent from the input and left out (--allow-missing): "
            f"{short_list(missing)}", verbose)


def default_setting_record(protocol: Protocol, settings: List[dict], created_by: str, verbose: bool
                           ) -> Optional[dict]:
    """``semicl_default_setting.json`` for the protocol's default setting (5pct), if this conversion makes it."""
    from nnunet_semicl.data.setting_files import default_setting_content

    if protocol.default_setting in [s["setting"] for s in settings]:
        return default_setting_content(protocol.default_setting, created_by=created_by)
    log(f"WARNING: no default setting: '{protocol.default_setting}' was skipped, so trainings need -p "
        f"nnUNetPlans_<setting> (or `nnunet_semicl split ... --default`).", verbose)
    return None


def convert_dataset(spec: DatasetSpec, protocol: Protocol, input_dir: str, raw: Optional[str],
                    preprocessed: Optional[str], dataset_id: int, name: str, layout: str,
                    spacing: Optional[Sequence[float]], cv_folds: Optional[int], allow_missing: bool,
                    num_processes: int, overwrite: bool, verbose: bool, created_by: str) -> dict:
    """Convert ``spec``'s dataset (arguments as ``convert_acdc``); return the summary.

    Every check that can fail on the input runs before anything is written, and the raw dataset is
    staged, so a failed conversion leaves the output roots as they were.
    """
    timer = Timer()
    protocol.check()
    raw_root, prep_root = output_roots(raw, preprocessed)
    input_dir = os.path.abspath(input_dir)
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    dataset_dir = os.path.join(raw_root, dataset_name)
    check_dataset_id_free(dataset_name, [raw_root, prep_root, os.environ.get("nnUNet_results")])
    command = f"{spec.module} {input_dir} -> {dataset_dir} {(layout, spacing, cv_folds, allow_missing, overwrite)}"
    with DatasetChange(dataset_name, prep_root, [raw_root], command, verbose) as change:
        if change.resumed:  # this very conversion was interrupted after its journal: it is complete now
            return {"dataset_name": dataset_name, "dataset_dir": dataset_dir, "resumed": True}
        for stale in remove_stale_partials(raw_root, dataset_name):  # left by versions before DatasetChange
            log(f"Removed {stale}, left by an interrupted conversion.", verbose)
        return _convert(change, spec, protocol, input_dir, raw_root, prep_root, dataset_name, dataset_dir, name,
                        layout, spacing, cv_folds, allow_missing, num_processes, overwrite, verbose, created_by, timer)


def _convert(change, spec: DatasetSpec, protocol: Protocol, input_dir: str, raw_root: str, prep_root: str,
             dataset_name: str, dataset_dir: str, name: str, layout: str, spacing: Optional[Sequence[float]],
             cv_folds: Optional[int], allow_missing: bool, num_processes: int, overwrite: bool, verbose: bool,
             created_by: str, timer: "Timer") -> dict:
    if os.path.exists(dataset_dir) and not overwrite:
        raise FileExistsError(f"{dataset_dir} already exists. Pass --overwrite to replace it (then run "
                              f"nnUNetv2_plan_and_preprocess again), or choose another --id.")
    if layout == "auto":
        layout = spec.detect_layout(input_dir)
    if layout not in spec.locate:
        raise ConversionError(f"Unknown layout '{layout}' (use {', '.join(spec.locate)} or auto).")
    assumes_spacing = layout == spec.hdf5_layout
    if not assumes_spacing and spacing is not None:
        log(f"NOTE: --spacing is ignored for the {layout} release (its files carry their geometry).", verbose)
    spacing = assumed_spacing(spacing, spec)

    cases = protocol.cases_of(protocol.all_groups)
    found, missing = spec.locate[layout](input_dir, cases)
    notes = compare_input_lists(input_dir, protocol, spec, verbose) if layout in spec.list_layouts else []
    check_missing(missing, protocol, spec, input_dir, allow_missing, verbose)

    present = [c for c in cases if c in found]
    folds = make_folds(protocol, present, cv_folds)
    settings, skipped = make_settings(protocol, folds, cv=cv_folds is not None, created_by=created_by)
    for s, why in skipped:
        log(f"WARNING: setting '{s}' skipped: {why}", verbose)
    skipped_names = [n for n, _ in skipped]
    prep_base = os.path.join(prep_root, dataset_name)
    default = default_setting_record(protocol, settings, created_by, verbose)
    plan_split_files(prep_base, folds, settings, overwrite, skipped=skipped_names, default=default)

    roles = {c: protocol.role_of(protocol.group_of(c)) for c in present}
    n_test = sum(r == "test" for r in roles.values())
    n_train = len(present) - n_test
    stage = change.stage(dataset_dir, folder=True)
    make_dataset_dirs(stage, with_test=n_test > 0)
    tasks = [{**spec.task_defaults, **found[c], "case": c, "spacing": spacing,
              **make_task_paths(stage, c, roles[c])} for c in present]
    log(f"Converting {len(tasks)} {spec.title} {spec.unit}s ({layout} layout) from {input_dir} with "
        f"{num_processes} process(es)", verbose)
    results = run_tasks(tasks, num_processes, spec.title, verbose)
    dataset_json = {"channel_names": {"0": spec.channel_name}, "labels": spec.labels, "numTraining": n_train,
                    "file_ending": ".nii.gz", "name": name, **spec.dataset_text(layout)}
    save_json(dataset_json, os.path.join(stage, "dataset.json"))
    by_case = {r["case"]: r for r in results}
    info = {
        "converter": spec.module,
        "created_by": created_by,
        "input": input_dir,
        "layout": layout,
        "spacing_zyx_mm": list(spacing) if assumes_spacing else "from the image files",
        "spacing_note": spec.spacing_note if assumes_spacing else "",
        **spec.info_after_spacing,
        "protocol": protocol.name, "protocol_source": protocol.source,
        **spec.info_after_protocol,
        "cv_folds": cv_folds, "allow_missing": allow_missing, "missing_cases": missing,
        "skipped_settings": dict(skipped), "list_file_notes": notes,
        "cases": {c: {"role": roles[c], **{k: found[c][k] for k in spec.case_info_keys if k in found[c]},
                      "shape_zyx": by_case[c]["shape"], "source": by_case[c]["source"]} for c in present},
    }
    save_json(info, os.path.join(stage, "conversion_info.json"))
    split_paths = write_split_files(prep_base, folds, settings, overwrite, skipped=skipped_names, default=default)
    note_stale_preprocessing(prep_base, overwrite, verbose)
    summary = {"dataset_name": dataset_name, "dataset_dir": dataset_dir,
               "layout": layout, "n_train_cases": n_train, "n_test_cases": n_test,
               "n_fold0_train": len(folds[0]["train"]), "n_fold0_val": len(folds[0]["val"]), "n_folds": len(folds),
               "missing": missing, "settings": [s["setting"] for s in settings], "skipped_settings": dict(skipped),
               "split_files": split_paths, "default_setting": default and default["setting"],
               "seconds": timer.seconds}
    log(f"Wrote {dataset_dir}: {n_train} training {spec.unit}s (fold 0: {summary['n_fold0_train']} train / "
        f"{summary['n_fold0_val']} val), {n_test} test {spec.unit}s in imagesTs/labelsTs, settings "
        f"{summary['settings']} in {prep_base} ({summary['seconds']:.1f} s).", verbose)
    log(next_steps(int(dataset_name[7:10]), dataset_name, spec.next_steps_configs, summary["settings"],
                   summary["default_setting"]), verbose)
    return summary
