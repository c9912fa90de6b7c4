"""``nnunet_semicl`` command line: the few things nnU-Net itself lacks.

    nnunet_semicl ext-path                    print the folder for nnUNet_extTrainer
    nnunet_semicl synthetic --id 990          write the built-in synthetic dataset
    nnunet_semicl split 27 --labeled 3 --group 'patient\\d+' --name lab3
    nnunet_semicl add-unlabeled 27 -i /data/unlabeled_scans
    nnunet_semicl tiny-config 27 -c 2d        small inherited configuration for CPU runs
    nnunet_semicl sync-plans 27               refresh setting variants after re-planning
    nnunet_semicl demo                        the end-to-end demo
    nnunet_semicl evaluate ...                paper-style metrics of a prediction folder
    nnunet_semicl convert-acdc / convert-la   dataset conversion with the papers' protocols
    nnunet_semicl benchmark step|samplers|accuracy|gradients   docs/performance.md's measurements

Planning, training, prediction and nnU-Net's own evaluation use the stock ``nnUNetv2_*`` commands.
"""
import argparse
import importlib
import os
import shlex
import sys

from nnunet_semicl import ext_trainer_path
from nnunet_semicl.argtypes import open_fraction, positive_int, seed_int
from nnunet_semicl.launch import cli_error

# sub-commands implemented in other modules: (name, module, help); each module has add_arguments(p) and run(args)
EXTERNAL_COMMANDS = [
    ("demo", "nnunet_semicl.demo", "generate, plan, train (labeled-only and semi-supervised), predict, evaluate"),
    ("evaluate", "nnunet_semicl.evaluation", "Dice, Jaccard, HD95, ASD of a prediction folder (paper tables)"),
    ("convert-acdc", "nnunet_semicl.dataset_conversion.acdc", "ACDC -> Dataset027_ACDC with the papers' protocol"),
    ("convert-la", "nnunet_semicl.dataset_conversion.la", "LA 2018 -> Dataset028_LA with the papers' protocol"),
    ("benchmark", "nnunet_semicl.benchmarking.cli", "step cost, sampler cost and variance, CPU-scale ACDC accuracy run"),
]


def print_ext_path():
    print(ext_trainer_path())


def _cmd_ext_path(args):
    print_ext_path()


def _command_text(args) -> str:
    """The command as parsed (recorded in a dataset change's journal: a rerun of the same command is recognised)."""
    return " ".join([args.command] + [f"{k}={v!r}" for k, v in sorted(vars(args).items())
                                      if k not in ("func", "module", "command")])


def _cmd_split(args):
    from nnunet_semicl.data.dataset_lookup import check_dataset_json, resolve_dataset_name
    from nnunet_semicl.data.overrides import check_setting_overrides, parse_set_options
    from nnunet_semicl.data.splits import compile_group_regex
    from nnunet_semicl.dataset_change import DatasetChange
    from nnunet_semicl.files import load_json

    # everything is checked before anything is written: a refused command leaves the folder as it was
    overrides = {k: v for k, v in (("num_epochs", args.epochs), ("num_iterations_per_epoch", args.iterations),
                                   ("num_val_iterations_per_epoch", args.val_iterations),
                                   ("save_every", args.save_every)) if v is not None}
    overrides = parse_set_options(args.set, overrides)
    check_setting_overrides(overrides, "nnunet_semicl split", exported_trainers() if args.set else ())
    if args.group is not None:
        compile_group_regex(args.group)
    name = resolve_dataset_name(args.dataset, need_preprocessed=True)
    base = os.path.join(os.environ["nnUNet_preprocessed"], name)
    check_dataset_json(load_json(os.path.join(base, "dataset.json")), os.path.join(base, "dataset.json"),
                       keys=("file_ending",))
    with DatasetChange(name, os.environ["nnUNet_preprocessed"], command=_command_text(args)) as change:
        if not change.resumed:  # (else: this very command was interrupted and has just been completed)
            _split(args, name, base, overrides)


def _split(args, name, base, overrides):
    from nnunet_semicl.data.setting_files import (check_default_setting_writable, check_setting_writable,
                                                  default_setting_content, write_default_setting, write_setting)
    from nnunet_semicl.data.splits import (check_folds_against_unlabeled, check_folds_keep_groups, default_folds,
                                           make_setting, read_folds, truly_unlabeled_cases, with_unlabeled_images)
    from nnunet_semicl.errors import InputError
    from nnunet_semicl.files import load_json, save_json

    dataset_json = load_json(os.path.join(base, "dataset.json"))
    ending = dataset_json["file_ending"]
    gt = os.path.join(base, "gt_segmentations")
    ids = sorted(f[: -len(ending)] for f in os.listdir(gt) if f.endswith(ending)) if os.path.isdir(gt) else []
    unlabeled_only = [c for c in truly_unlabeled_cases(dataset_json) if c in set(ids)]
    splits_path = os.path.join(base, "splits_final.json")
    folds = read_folds(base)
    new_folds = folds is None
    if new_folds:
        if not ids:
            raise InputError(f"No preprocessed cases in {gt}; run nnUNetv2_plan_and_preprocess first.")
        folds = default_folds(ids, unlabeled_only, group_regex=args.group)
    else:
        check_folds_keep_groups(folds, args.group, splits_path)
        check_folds_against_unlabeled(folds, unlabeled_only, splits_path)
    setting = args.name or _default_setting_name(args)
    created_by = "nnunet_semicl split " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    content = make_setting(with_unlabeled_images(folds, unlabeled_only), setting, n_labeled=args.labeled,
                           fraction=args.fraction, labeled_ids=args.labeled_cases, group_regex=args.group,
                           seed=args.seed, unlabeled_only=unlabeled_only, all_cases=ids or None,
                           created_by=created_by)
    check_setting_writable(base, content, args.plans, args.overwrite, overrides or None)
    default = default_setting_content(setting, overrides or None, created_by) if args.default else None
    if default is not None:
        check_default_setting_writable(base, default, args.overwrite)
    if new_folds:
        save_json(folds, splits_path)
        print(f"Created {splits_path} (nnU-Net's 5-fold split over annotated "
              f"{'patients' if args.group else 'cases'})")
    split_path, plans_path = write_setting(base, content, args.plans, args.overwrite, overrides or None)
    f0 = content["folds"][0]
    print(f"Setting '{setting}': fold 0 has {len(f0['labeled'])} labeled and {len(f0['unlabeled'])} unlabeled "
          f"training cases.\n  split:  {split_path}\n  plans:  {plans_path}\n"
          f"Train with: nnUNetv2_train {name} CONFIG FOLD -p {args.plans}_{setting} -tr nnUNetTrainerACTIONpp")
    if default is not None:
        path = write_default_setting(base, default, args.overwrite)
        print(f"Default setting of {name}: '{setting}' ({path}); our trainers use it when no -p is given:\n"
              f"  nnUNetv2_train {name} CONFIG FOLD -tr nnUNetTrainerACTIONpp")


def exported_trainers() -> list:
    """Every trainer class nnU-Net finds in this package (``--set`` keys must be a hyperparameter of one)."""
    import inspect

    from nnunet_semicl.trainers import nnunet_semicl_trainers

    return [c for n, c in vars(nnunet_semicl_trainers).items() if inspect.isclass(c) and n.startswith("nnUNetTrainer")]


def _default_setting_name(args) -> str:
    if args.fraction is not None:
        return f"{round(args.fraction * 100):g}pct"
    if args.labeled is not None:
        return f"lab{args.labeled}"
    return "custom"


def _cmd_add_unlabeled(args):
    from nnunet_semicl.data.unlabeled_images import add_unlabeled_images

    add_unlabeled_images(args.dataset, args.input, prefix=args.prefix, num_processes=args.np)


def _cmd_tiny_config(args):
    from nnunet_semicl.data.dataset_lookup import resolve_dataset_name
    from nnunet_semicl.data.plans_tools import add_tiny_configuration
    from nnunet_semicl.dataset_change import DatasetChange

    name = resolve_dataset_name(args.dataset, need_preprocessed=True)
    base = os.path.join(os.environ["nnUNet_preprocessed"], name)
    kw = {}
    for key in ("patch_size", "batch_size", "feature_divisor", "max_features"):
        if getattr(args, key) is not None:  # a 0 reaches the checks of make_tiny_configuration
            kw[key] = getattr(args, key)
    with DatasetChange(name, os.environ["nnUNet_preprocessed"], command=_command_text(args)) as change:
        if change.resumed:
            return
        for c in args.c:  # all configurations or none (one change)
            written = add_tiny_configuration(base, c, None if len(args.c) > 1 else args.name, [args.plans],
                                             overwrite=args.overwrite, **kw)
            print(f"Added configuration '{args.name if (args.name and len(args.c) == 1) else c + '_tiny'}' to:\n  "
                  + "\n  ".join(written))


def _cmd_sync_plans(args):
    from nnunet_semicl.data.dataset_lookup import resolve_dataset_name
    from nnunet_semicl.data.plans_tools import sync_setting_variants
    from nnunet_semicl.dataset_change import DatasetChange

    name = resolve_dataset_name(args.dataset, need_preprocessed=True)
    with DatasetChange(name, os.environ["nnUNet_preprocessed"], command=_command_text(args)) as change:
        if change.resumed:
            return
        updated = sync_setting_variants(os.path.join(os.environ["nnUNet_preprocessed"], name), args.plans)
    print("Updated:\n  " + "\n  ".join(updated) if updated else "All setting variants are up to date.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_semicl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ext-path", help="print the trainer folder for nnUNet_extTrainer")
    s.set_defaults(func=_cmd_ext_path)

    sub.add_parser("synthetic", help="write the built-in synthetic dataset (nnunet_semicl synthetic -h)")

    s = sub.add_parser("split", help="write a labeled/unlabeled setting beside splits_final.json")
    s.add_argument("dataset", help="dataset id or name")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--labeled", type=positive_int, help="number of labeled groups (patients with --group) per fold")
    g.add_argument("--fraction", type=open_fraction, help="fraction of the annotated groups to label, in (0, 1)")
    g.add_argument("--labeled-cases", nargs="+", help="explicit case or group ids to label")
    s.add_argument("--group", default=None, help="regex whose match (first group) is the patient id, e.g. "
                                                 "'patient\\d+'; cases of one patient are labeled together")
    s.add_argument("--seed", type=seed_int, default=0, help="random seed of the labeled draw (0 .. 2**32-1)")
    s.add_argument("--name", default=None, help="setting name (default: e.g. 10pct or lab3)")
    s.add_argument("--plans", default="nnUNetPlans", help="base plans identifier (default nnUNetPlans)")
    s.add_argument("--epochs", type=positive_int, default=None, help="override num_epochs for our trainers")
    s.add_argument("--iterations", type=positive_int, default=None, help="override num_iterations_per_epoch")
    s.add_argument("--val-iterations", type=positive_int, default=None, help="override num_val_iterations_per_epoch")
    s.add_argument("--save-every", type=positive_int, default=None,
                   help="write checkpoint_latest every N epochs (default: about ten times per schedule, at most "
                        "every 50 epochs as nnU-Net)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a trainer hyperparameter for this setting (repeatable), e.g. --set "
                        "distribution_alignment=false; VALUE is a JSON literal or a plain string; checked against "
                        "the trainer at training start (docs/trainers.md)")
    s.add_argument("--default", action="store_true",
                   help="make this setting the dataset's default: our trainers use it when no -p is given "
                        "(the converters make 5pct the default)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing setting of the same name")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("add-unlabeled", help="add images without annotation to a raw dataset")
    s.add_argument("dataset", help="dataset id or name (must exist in nnUNet_raw)")
    s.add_argument("-i", "--input", required=True, help="folder with CASE_XXXX<file_ending> images")
    s.add_argument("--prefix", default="", help="prefix for the new case ids (to avoid clashes)")
    s.add_argument("-np", type=positive_int, default=2, help="processes for the fingerprint")
    s.set_defaults(func=_cmd_add_unlabeled)

    s = sub.add_parser("tiny-config", help="add a small inherited configuration (fast CPU runs)")
    s.add_argument("dataset")
    s.add_argument("-c", nargs="+", default=["2d"], help="parent configuration(s), e.g. 2d 3d_fullres")
    s.add_argument("--name", default=None, help="name (default <parent>_tiny)")
    s.add_argument("--plans", default="nnUNetPlans")
    s.add_argument("--patch-size", type=positive_int, nargs="+", default=None)
    s.add_argument("--batch-size", type=positive_int, default=None)
    s.add_argument("--feature-divisor", type=positive_int, default=None,
                   help="divide the parent's feature widths by this (default 4)")
    s.add_argument("--max-features", type=positive_int, default=None, help="cap on the feature width (default 64)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_tiny_config)

    s = sub.add_parser("sync-plans", help="re-derive setting variants from re-planned base plans")
    s.add_argument("dataset")
    s.add_argument("--plans", default="nnUNetPlans")
    s.set_defaults(func=_cmd_sync_plans)

    for name, module, help_text in EXTERNAL_COMMANDS:
        s = sub.add_parser(name, help=help_text)
        s.set_defaults(func=_lazy(module), module=module)
        try:
            importlib.import_module(module).add_arguments(s)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            s.set_defaults(func=_missing(module))
    return p


def _lazy(module):
    def run(args):
        return importlib.import_module(module).run(args)
    return run


def _missing(module):
    def run(args):
        raise SystemExit(f"{module} is not available in this installation.")
    return run


def main(argv=None):
    from nnunet_semicl.errors import InputError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["synthetic"]:  # its own parser (see python -m nnunet_semicl.dataset_conversion.synthetic -h)
        from nnunet_semicl.dataset_conversion.synthetic import main as synthetic_main
        synthetic_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        return 0
    except (InputError, FileExistsError, FileNotFoundError) as e:
        cli_error(args.command, e)


if __name__ == "__main__":
    main()
