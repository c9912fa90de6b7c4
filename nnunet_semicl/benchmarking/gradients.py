"""``nnunet_semicl benchmark gradients``: how hard each loss term pulls on the network, at a trained checkpoint.

A term's loss value says little about its effect: what sets the update direction is its gradient. A term whose
gradient is ten times the labeled loss's drives the training whatever its weight looks like (docs/trainers.md,
"Why a term costs accuracy"). For one results folder (``-d``, ``-c``, ``-tr``, ``-p``, ``-f`` as for
``nnUNetv2_train``) the command:

1. builds the trainer as ``nnUNetv2_train`` does and loads ``checkpoint_final.pth`` (``--checkpoint``);
2. draws ``--batches`` labeled and unlabeled batches from the trainer's own loaders;
3. at each point of the unsupervised terms' run (``--at``: fractions of the way from the iteration at which the
   warm-up gate opened to the end of training; the ramp, the ATS temperature and the phase follow the iteration)
   computes every weighted term exactly as the training step does, and the norm of each term's gradient on the
   encoder, the decoder and the heads (one backward per term);
4. prints a table (mean over the batches) with each term's norm relative to the pseudo-label term's (``unsup``).

Nothing is trained (no optimizer step, no EMA or queue update that outlives the command) and nothing is written
into the results folder (the trainer is built over a temporary copy of it, removed at the end). ``--json PATH``
also writes the numbers.
"""
import argparse
import os
import tempfile
from typing import Dict, Iterable, List, Mapping, Sequence

from nnunet_semicl.argtypes import closed_fraction, positive_int, seed_int
from nnunet_semicl.errors import InputError

def term_gradient_norms(terms: Mapping[str, "torch.Tensor"],
                        groups: Mapping[str, Sequence["torch.nn.Parameter"]]) -> Dict[str, Dict[str, float]]:
    """``{term: {group: L2 norm of d term / d parameters of the group}}`` for scalar loss terms sharing one graph.

    A group that a term does not reach has norm 0 (e.g. the decoder for a term on bottleneck features); a term
    that is a constant (no graph) has 0 everywhere. The graph is kept between terms and freed after the last."""
    import torch

    params: List[torch.nn.Parameter] = []
    owner: List[str] = []
    for name, ps in groups.items():
        for p in ps:
            if p.requires_grad:
                params.append(p)
                owner.append(name)
    out: Dict[str, Dict[str, float]] = {}
    names = list(terms)
    for i, name in enumerate(names):
        value = terms[name]
        squares = {g: 0.0 for g in groups}
        if value.requires_grad:
            grads = torch.autograd.grad(value, params, retain_graph=i < len(names) - 1, allow_unused=True)
            for g, group in zip(grads, owner):
                if g is not None:
                    squares[group] += float(g.detach().float().pow(2).sum())
        out[name] = {g: s ** 0.5 for g, s in squares.items()}
    return out


def mean_over_batches(rows: Iterable[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Entry-wise mean of several ``term_gradient_norms`` results (terms missing from a batch are left out of
    that term's mean)."""
    sums: Dict[str, Dict[str, float]] = {}
    counts: Dict[str, int] = {}
    for row in rows:
        for term, per_group in row.items():
            acc = sums.setdefault(term, {})
            for k, v in per_group.items():
                acc[k] = acc.get(k, 0.0) + v
            counts[term] = counts.get(term, 0) + 1
    return {t: {k: v / counts[t] for k, v in acc.items()} for t, acc in sums.items()}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", required=True, help="dataset name or id, as for nnUNetv2_train")
    p.add_argument("-c", "--configuration", required=True)
    p.add_argument("-tr", "--trainer", required=True)
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="file in the fold folder (default "
                                                                        "checkpoint_final.pth)")
    p.add_argument("--batches", type=positive_int, default=4, help="batches averaged per point (default 4)")
    p.add_argument("--at", type=closed_fraction, nargs="+", default=[0.05, 0.5, 0.95],
                   help="points of the unsupervised terms' run, as fractions from the gate to the end "
                        "(default 0.05 0.5 0.95)")
    p.add_argument("--seed", type=seed_int, default=0, help="torch seed of the batches' augmentation (default 0)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def _build(args):
    """The trainer as ``nnUNetv2_train`` builds it, over a temporary copy of its results folder (the small files,
    the checkpoint linked): nnU-Net's trainer writes its log and our setting records into its output folder from
    the moment it is built, and this command must leave the user's folder as it was."""
    import shutil

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_semicl.data.dataset_lookup import require_paths, resolve_dataset_name

    require_paths("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    name = resolve_dataset_name(args.dataset, need_preprocessed=True)
    fold = args.fold if args.fold == "all" else int(args.fold)
    model = f"{args.trainer}__{args.plans}__{args.configuration}"
    fold_dir = os.path.join(os.environ["nnUNet_results"], name, model, f"fold_{fold}")
    checkpoint = os.path.join(fold_dir, args.checkpoint)
    if not os.path.isfile(checkpoint):
        raise InputError(f"{checkpoint} does not exist: train first (nnUNetv2_train {args.dataset} "
                         f"{args.configuration} {args.fold} -tr {args.trainer} -p {args.plans}) or name another "
                         f"file with --checkpoint.")
    scratch = tempfile.mkdtemp(prefix="semicl_gradients_")
    copy = os.path.join(scratch, name, model, f"fold_{fold}")
    shutil.copytree(os.path.dirname(fold_dir), os.path.dirname(copy), symlinks=True,
                    ignore=lambda folder, files: [f for f in files if f.endswith(".pth") or f == "validation"])
    os.symlink(os.path.abspath(checkpoint), os.path.join(copy, args.checkpoint))
    results = os.environ["nnUNet_results"]
    os.environ["nnUNet_results"] = scratch   # nnU-Net reads it when the trainer is built (its output folder)
    try:
        trainer = get_trainer_from_args(str(args.dataset), args.configuration, fold, args.trainer, args.plans,
                                        device=torch.device(args.device))
        if not hasattr(trainer, "compute_losses"):
            raise InputError(f"{args.trainer} is not one of this package's semi-supervised trainers: it has no "
                             f"loss terms to compare.")
        trainer.initialize()
        trainer.load_checkpoint(os.path.join(copy, args.checkpoint))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        os.environ["nnUNet_results"] = results
    return trainer, checkpoint, scratch


def measure(trainer, at: Sequence[float], batches: int, seed: int = 0) -> Dict[float, dict]:
    """``{fraction: {"step", "scale", "terms": {term: {"loss", group norms...}}}}`` for a trainer whose
    checkpoint is loaded (``_build``). Restores the trainer's iteration and epoch afterwards."""
    import torch

    from nnunet_semicl.modules.ema import unwrap

    start = trainer.unsup_start_step()
    if start is None:
        raise InputError("The warm-up gate never opened in this run: no unsupervised term ever ran (see "
                         "semicl_training_summary.json), so there is no gradient of them to measure.")
    network = unwrap(trainer.network)
    encoder = list(network.encoder.parameters())
    in_encoder = {id(p) for p in encoder}
    groups = {"encoder": encoder,
              "decoder": [p for p in network.parameters() if id(p) not in in_encoder],
              "heads": list(trainer.heads.parameters())}
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.start_training_dynamics()
    saved = trainer.global_step, trainer.current_epoch
    total = trainer.total_iterations
    results = {}
    state = {k: v.clone() for k, v in trainer.state_modules.state_dict().items()}   # queues, banks, centroids
    try:
        for frac in at:
            torch.manual_seed(seed)
            trainer.global_step = min(total - 1, int(round(start + frac * (total - start))))
            trainer.current_epoch = trainer.global_step // trainer.num_iterations_per_epoch
            rows, losses = [], []
            for _ in range(batches):
                batch = next(trainer.dataloader_train)
                if not trainer.uses_unlabeled_now():
                    raise InputError(f"At iteration {trainer.global_step} this trainer computes no unsupervised "
                                     f"term: choose --at points inside the unsupervised terms' run.")
                ctx = trainer.prepare_step(batch, next(trainer.dataloader_unlabeled))
                terms = trainer.step_losses(ctx)
                losses.append({k: float(v.detach()) for k, v in terms.items()})
                rows.append(term_gradient_norms(terms, groups))
                trainer.state_modules.load_state_dict(state)
            norms = mean_over_batches(rows)
            for term in norms:
                vals = [l[term] for l in losses if term in l]
                norms[term]["loss"] = sum(vals) / len(vals)
            results[frac] = {"step": trainer.global_step, "scale": trainer.unsup_scale(), "terms": norms}
    finally:
        trainer.global_step, trainer.current_epoch = saved
        trainer.state_modules.load_state_dict(state)
    return results


def format_gradient_table(results: Mapping[float, dict]) -> str:
    """Markdown: one row per point and term; the norms and their ratio to the pseudo-label term's."""
    head = ("| at | iteration | ramp | term | loss | encoder | decoder | heads | network / unsup |\n"
            "|---:|---:|---:|:---|---:|---:|---:|---:|---:|")
    lines = [head]
    for frac, r in results.items():
        terms = r["terms"]
        ref = terms.get("unsup")
        ref_net = None if ref is None else (ref["encoder"] ** 2 + ref["decoder"] ** 2) ** 0.5
        for name, t in terms.items():
            net = (t["encoder"] ** 2 + t["decoder"] ** 2) ** 0.5
            ratio = "-" if not ref_net else f"{net / ref_net:.2f}"
            lines.append(f"| {frac:g} | {r['step']} | {r['scale']:.3f} | {name} | {t['loss']:.4f} | "
                         f"{t['encoder']:.4f} | {t['decoder']:.4f} | {t['heads']:.4f} | {ratio} |")
    return "\n".join(lines)


def run(args) -> None:
    from nnunet_semicl.files import save_json
    from nnunet_semicl.launch import exit_2_on

    import shutil

    with exit_2_on("benchmark gradients", InputError):
        trainer, checkpoint, scratch = _build(args)
        try:
            results = measure(trainer, args.at, args.batches, args.seed)
        finally:
            close_loaders(trainer)
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"Gradient norm of each weighted loss term ({args.batches} batches per point), {checkpoint}:\n")
    print(format_gradient_table(results))
    if args.json:
        save_json({"checkpoint": checkpoint, "batches": args.batches,
                   "points": {str(k): v for k, v in results.items()}}, args.json)


def close_loaders(trainer) -> None:
    """Stop the background augmenters of nnU-Net's loaders (they would keep the process alive)."""
    for name in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
        loader = getattr(trainer, name, None)
        if hasattr(loader, "_finish"):
            loader._finish()
