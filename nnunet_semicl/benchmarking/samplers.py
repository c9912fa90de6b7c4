"""``nnunet_semicl benchmark samplers``: cost and variance of uniform, SG and SAG pixel sampling.

1. **Time** of one draw by ``UniformSampler`` and ``StratifiedSampler`` (SG, and SAG with
   ``antithetic=True``) on CPU for 1e4 .. 1e7 candidate pixels (all-True 2D masks of 4 images), for the
   two draw sizes the trainers use: 256 anchors, and 256 x 512 = 131072 negatives; plus the negatives'
   draw over a 1-D memory bank (MONA/ARCO: 30,000 / 50,000 entries).
2. **Variance** of the sampler's estimate ``sum(weight * h[index])`` of the mean of a per-pixel
   statistic ``h`` over a class region, over many draws of 256 pixels, relative to uniform sampling.
   ``h`` is computed from real images: ACDC slices (the SSL4MIS copy, when ``--acdc`` points at it)
   or the built-in synthetic phantoms. The feature map is that of a fixed, randomly initialised
   3-layer convolutional network (seed 0) applied to the z-scored image; two statistics: the cosine
   of each pixel's feature to the class prototype (the mean feature of the class), and the feature
   norm. Both at full resolution and at stride 4 (the trainers' representation resolution).
"""
import argparse
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_semicl.argtypes import positive_float, positive_int
from nnunet_semicl.benchmarking.common import (add_update_docs_argument, command_line, fmt, format_machine,
                                               machine_info, markdown_table, shared_acdc_folder,
                                               update_docs_if_asked)
from nnunet_semicl.files import save_json

SAMPLERS = ("uniform", "sg", "sag")
DEFAULT_SIZES = (1e4, 1e5, 1e6, 1e7)
DRAWS = (256, 256 * 512)
BANK_SIZES = (30000, 50000)
CLASS_NAMES = {0: "background", 1: "RV", 2: "MLV", 3: "LVC"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=positive_float, nargs="+", default=list(DEFAULT_SIZES),
                   help="candidate counts for the timing (default 1e4 1e5 1e6 1e7)")
    p.add_argument("--images", type=positive_int, default=4, help="images per timing mask (default 4)")
    p.add_argument("--min-time", type=positive_float, default=0.5,
                   help="seconds of repeats per timing cell (default 0.5)")
    p.add_argument("--draws", type=positive_int, default=1000, help="draws per variance estimate (default 1000)")
    p.add_argument("--anchors", type=positive_int, default=256,
                   help="pixels per draw in the variance study (default 256)")
    p.add_argument("--acdc", default=None, help="SSL4MIS ACDC folder for real slices (default: ../shared/data/"
                                                "ACDC_ssl4mis beside the checkout when present, else phantoms)")
    p.add_argument("--source", choices=("auto", "acdc", "phantom"), default="auto")
    p.add_argument("--strides", type=positive_int, nargs="+", default=[1, 4], help="feature-map strides (default 1 4)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: the CPU count)")
    p.add_argument("--official", default=None,
                   help="path to a fetched copy of the official ARCO code (its code/loss_helper.py, or the folder): "
                        "adds grid_monte_carlo_sample / grid_as_monte_carlo_sample to the side-by-side table "
                        "(imported from there at run time, never copied)")
    p.add_argument("--out", default="nnunet_semicl_benchmark", help="folder for samplers.json / samplers.md")
    p.add_argument("--smoke", action="store_true", help="tiny check: sizes 1e4 1e5, 50 draws, phantoms")
    add_update_docs_argument(p, "samplers")


def make_sampler(name: str):
    from nnunet_semicl.sampling.stratified import StratifiedSampler
    from nnunet_semicl.sampling.uniform import UniformSampler

    if name == "uniform":
        return UniformSampler()
    if name in ("sg", "sag"):
        return StratifiedSampler(antithetic=name == "sag")
    raise ValueError(f"unknown sampler {name!r}")


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def timing_mask(n_candidates: float, images: int = 4):
    """An all-True [images, s, s] mask with about ``n_candidates`` entries."""
    import torch
    s = max(1, int(round(math.sqrt(float(n_candidates) / images))))
    return torch.ones((images, s, s), dtype=torch.bool)


def _sync(device: str):
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def time_interleaved(fns: Dict[str, Callable[[], object]], min_time: float = 0.5, min_reps: int = 3,
                     max_reps: int = 200, device: str = "cpu") -> Dict[str, Dict[str, float]]:
    """Median wall time of every ``fns[name]()``, the calls interleaved round-robin (one call of each per
    round, the starting function rotating), so that load changes of a shared machine hit all alike.

    Rounds continue until each function has ``min_reps`` calls and ``min_time`` seconds have passed
    (at most ``max_reps`` rounds). One warm-up call each first.
    """
    import statistics
    names = list(fns)
    for name in names:
        fns[name]()
    _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in names}
    start = time.perf_counter()
    r = 0
    while r < min_reps or (time.perf_counter() - start < min_time and r < max_reps):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            t = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t)
        r += 1
    return {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "reps": len(v)}
            for k, v in times.items()}


def timing_benchmark(sizes: Sequence[float] = DEFAULT_SIZES, draws: Sequence[int] = DRAWS, images: int = 4,
                     bank_sizes: Sequence[int] = BANK_SIZES, min_time: float = 0.5, verbose: bool = True,
                     device: str = "cpu") -> List[dict]:
    import torch
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    cases = [("2d", timing_mask(n, images)) for n in sizes] + \
            [("bank", torch.ones(int(n), dtype=torch.bool)) for n in bank_sizes]
    for kind, mask in cases:
        mask = mask.to(device)
        candidates = int(mask.sum())
        for n in (draws if kind == "2d" else draws[-1:]):
            row = {"kind": kind, "shape": list(mask.shape), "candidates": candidates, "n": int(n)}
            fns = {name: (lambda s=make_sampler(name): s(mask, int(n), g)) for name in SAMPLERS}
            row.update(time_interleaved(fns, min_time=min_time * len(SAMPLERS),
                                        min_reps=1 if candidates >= 5e6 else 3, device=device))
            rows.append(row)
            if verbose:
                print(f"  {kind:<4} {candidates:>9} candidates, n={n:<6}: " + ", ".join(
                    f"{k} {row[k]['median_ms']:.2f} ms" for k in SAMPLERS), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# side by side with the official ARCO helper (issue 13's table)
# ------------------------------------------------------------------------------------------------
#: (draws, candidates, kind): 256 anchors among class pixels, 256 x 512 negatives from a memory bank
COMPARISON_CASES = ((256, 10_000, "anchors"), (256, 100_000, "anchors"), (256, 1_000_000, "anchors"),
                    (131072, 30_000, "bank"), (131072, 50_000, "bank"))
#: our side: index strata on the 1-D mask, spatial strata on a [16, H, W] mask, uniform on the 1-D mask
OURS = (("index_sg", "index", False), ("index_sag", "index", True), ("spatial_sg", "spatial", False),
        ("spatial_sag", "spatial", True))


def load_official(path: str):
    """``(grid_monte_carlo_sample, grid_as_monte_carlo_sample)`` from a copy of the official ARCO code
    (``code/loss_helper.py`` of charlesyou999648/ARCO, or a folder holding it), imported at run time
    from where it lies; nothing of it is copied."""
    import importlib.util
    if os.path.isdir(path):
        for cand in (os.path.join(path, "code", "loss_helper.py"), os.path.join(path, "loss_helper.py")):
            if os.path.isfile(cand):
                path = cand
                break
    if not os.path.isfile(path):
        raise SystemExit(f"--official: no loss_helper.py at {path}")
    spec = importlib.util.spec_from_file_location("_arco_official_loss_helper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.grid_monte_carlo_sample, mod.grid_as_monte_carlo_sample


def comparison_benchmark(official: Optional[str] = None, cases=COMPARISON_CASES, images: int = 16,
                         min_time: float = 1.0, min_reps: int = 7, device: str = "cpu",
                         verbose: bool = True) -> List[dict]:
    """Issue 13's table: one call of each sampler per round, all of a row interleaved; medians (ms).

    Ours: index SG / SAG on a 1-D mask of N candidates, spatial SG / SAG on an all-True
    ``[images, s, s]`` mask of about N candidates, uniform on the 1-D mask. Official (``official``: a
    path for :func:`load_official`): ``grid_monte_carlo_sample(N, n)`` / ``grid_as_monte_carlo_sample``,
    which get only the count N (numpy on the CPU; on CUDA its result is moved to the device).
    """
    import torch
    from nnunet_semicl.sampling.stratified import StratifiedSampler
    from nnunet_semicl.sampling.uniform import UniformSampler

    off = load_official(official) if official else None
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for n, num, kind in cases:
        flat = torch.ones(int(num), dtype=torch.bool, device=device)
        grid_mask = timing_mask(num, images).to(device)
        fns = {"uniform": lambda: UniformSampler()(flat, n, g)}
        for name, strata, anti in OURS:
            s = StratifiedSampler(antithetic=anti, strata=strata)
            fns[name] = (lambda s=s, m=(flat if strata == "index" else grid_mask): s(m, n, g))
        if off is not None:
            for name, fn in zip(("official_sg", "official_sag"), off):
                fns[name] = (lambda fn=fn: fn(int(num), n).to(device))
        row = {"kind": kind, "n": int(n), "candidates": int(num), "spatial_shape": list(grid_mask.shape),
               "device": str(device)}
        row.update(time_interleaved(fns, min_time=min_time, min_reps=min_reps, device=device))
        rows.append(row)
        if verbose:
            print(f"  n={n:<6} N={num:<8}: " + ", ".join(f"{k} {v['median_ms']:.2f}" for k, v in row.items()
                                                      if isinstance(v, dict)) + " ms", flush=True)
    return rows


def format_comparison_markdown(rows: List[dict]) -> str:
    has_off = any("official_sg" in r for r in rows)
    out = []
    for r in rows:
        ms = lambda k: fmt(r[k]["median_ms"], 2) if k in r else "-"
        what = "256 anchors" if r["kind"] == "anchors" else f"{r['n']:,} negatives"
        size = f"{r['candidates']:.0e}" if r["kind"] == "anchors" else f"{r['candidates']:.0e} bank"
        u = r["uniform"]["median_ms"]
        worst = {v: max(r[f"{s}_{v}"]["median_ms"] for s in ("index", "spatial")) for v in ("sg", "sag")}
        speedup = (f"{fmt(r['official_sg']['median_ms'] / worst['sg'], 1)} / "
                   f"{fmt(r['official_sag']['median_ms'] / worst['sag'], 1)}") if has_off else "-"
        out.append([what, size, f"{ms('official_sg')} / {ms('official_sag')}",
                    f"{ms('index_sg')} / {ms('index_sag')}", f"{ms('spatial_sg')} / {ms('spatial_sag')}", ms("uniform"),
                    f"{fmt(worst['sg'] / u, 1)} / {fmt(worst['sag'] / u, 1)}", speedup])
    return markdown_table(["draws", "N candidates", "official SG / SAG", "ours, index SG / SAG",
                           "ours, spatial SG / SAG", "uniform", "slower of ours / uniform (SG / SAG)",
                           "official / slower of ours (SG / SAG)"], out, "lrllllll")


# ------------------------------------------------------------------------------------------------
# variance
# ------------------------------------------------------------------------------------------------
def load_acdc_slices(folder: str, n: int = 8):
    """``n`` mid-ventricular training slices (all four classes present) of different patients, centre-cropped to a
    common size: (images [n, H, W] float32, labels [n, H, W] int64, description)."""
    import h5py
    import numpy as np
    import re

    data = os.path.join(folder, "data")
    files = sorted(f for f in os.listdir(data) if re.match(r"patient\d+_frame01_slice_\d+\.h5$", f))
    by_patient: Dict[str, List[str]] = {}
    for f in files:
        by_patient.setdefault(f.split("_")[0], []).append(f)
    imgs, labs, names = [], [], []
    for patient in sorted(by_patient):
        fs = sorted(by_patient[patient], key=lambda f: int(f.rsplit("_", 1)[1][:-3]))
        f = fs[len(fs) // 2]
        with h5py.File(os.path.join(data, f), "r") as h:
            img, lab = h["image"][()].astype(np.float32), h["label"][()].astype(np.int64)
        if len(np.unique(lab)) < 4:
            continue
        imgs.append(img)
        labs.append(lab)
        names.append(f[:-3])
        if len(imgs) == n:
            break
    if not imgs:
        raise SystemExit(f"no usable ACDC slice in {data}")
    h = min(i.shape[0] for i in imgs)
    w = min(i.shape[1] for i in imgs)

    def crop(a):
        y, x = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        return a[y:y + h, x:x + w]

    return (np.stack([crop(i) for i in imgs]), np.stack([crop(lb) for lb in labs]),
            f"ACDC (SSL4MIS copy): {len(imgs)} mid-ventricular ED slices of different training patients, "
            f"centre-cropped to {h}x{w}")


def phantom_slices(n: int = 8, size: int = 128):
    import numpy as np
    from nnunet_semicl.dataset_conversion.synthetic import PhantomSpec, render_phantom, sample_patient

    spec = PhantomSpec(shape=(1, size, size), spacing=(8.0, 1.5, 1.5))
    imgs, labs = [], []
    for p in range(n):
        rng = np.random.RandomState(1000 + p)
        img, lab = render_phantom(sample_patient(rng), 0, spec, rng)
        imgs.append(img[0])
        labs.append(lab[0].astype(np.int64))
    return np.stack(imgs), np.stack(labs), f"synthetic phantoms: {n} slices of {size}x{size}"


def feature_statistics(images, labels, stride: int = 1, channels: int = 32, seed: int = 0):
    """Per-pixel statistics of a fixed random conv feature map: ({'cosine': {c: h}, 'norm': h}, labels)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None]
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    layers = []
    c_in = 1
    for c_out in (channels // 2, channels, channels):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (c_in * 9)))
            conv.bias.zero_()
        layers += [conv, nn.LeakyReLU(0.01)]
        c_in = c_out
    net = nn.Sequential(*layers)
    with torch.no_grad():
        f = net(x)
        if stride > 1:
            f = F.avg_pool2d(f, stride)
            y = y[:, stride // 2::stride, stride // 2::stride][:, : f.shape[2], : f.shape[3]]
        norm = f.norm(dim=1)
        fn = F.normalize(f, dim=1)
        cos = {}
        for c in sorted(int(v) for v in torch.unique(y)):
            m = y == c
            proto = F.normalize(f.movedim(1, -1)[m].mean(0), dim=0)
            cos[c] = (fn * proto[None, :, None, None]).sum(1)
    return {"cosine": cos, "norm": norm}, y


def estimator_variance(h, mask, samplers: Sequence[str] = SAMPLERS, n: int = 256, draws: int = 1000,
                       seed: int = 0) -> Dict[str, dict]:
    """Mean, variance and bias z-score of ``sum(w * h[idx])`` over ``draws`` draws of each sampler.

    ``h``: one statistic map, or a dict ``{name: map}`` of several (estimated from the same draws).
    Returns ``{"truth", "candidates", sampler: {...}}``, or a dict of those per statistic name.
    """
    import torch
    maps = h if isinstance(h, dict) else {"_": h}
    flat = {k: v.reshape(-1).double() for k, v in maps.items()}
    m = mask.reshape(-1)
    out = {k: {"truth": float(f[m].mean()), "candidates": int(m.sum())} for k, f in flat.items()}
    for name in samplers:
        s = make_sampler(name)
        g = torch.Generator().manual_seed(seed)
        est = {k: torch.empty(draws, dtype=torch.float64) for k in flat}
        for r in range(draws):
            idx, w = s(mask, n, g)
            w = w.double()
            for k, f in flat.items():
                est[k][r] = (w * f[idx]).sum()
        for k, e in est.items():
            var = float(e.var(unbiased=True))
            z = (float(e.mean()) - out[k]["truth"]) / math.sqrt(max(var, 1e-300) / draws)
            out[k][name] = {"mean": float(e.mean()), "var": var, "bias_z": z}
    for k in out:
        u = out[k].get("uniform", {}).get("var")
        for name in samplers:
            out[k][name]["var_ratio"] = out[k][name]["var"] / u if u else float("nan")
    return out if isinstance(h, dict) else out["_"]


STATISTICS = ("cosine to class prototype", "feature norm")


def variance_benchmark(images, labels, strides: Sequence[int] = (1, 4), n: int = 256, draws: int = 1000,
                       verbose: bool = True) -> List[dict]:
    rows = []
    for stride in strides:
        stats, y = feature_statistics(images, labels, stride)
        for c in sorted(stats["cosine"]):
            mask = y == c
            res_all = estimator_variance({STATISTICS[0]: stats["cosine"][c], STATISTICS[1]: stats["norm"]}, mask,
                                         n=n, draws=draws, seed=stride * 100 + c)
            for stat_name in STATISTICS:
                res = res_all[stat_name]
                rows.append({"stride": stride, "class": c, "class_name": CLASS_NAMES.get(c, str(c)),
                             "statistic": stat_name, "map_shape": list(y.shape), **res})
                if verbose:
                    print(f"  stride {stride} class {c} {stat_name:<26} {res['candidates']:>7} px: "
                          f"SG/U {res['sg']['var_ratio']:.3f}, SAG/U {res['sag']['var_ratio']:.3f}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def format_samplers_markdown(report: dict) -> str:
    t_rows = []
    for r in report["timing"]:
        what = f"{r['candidates']:.0e} px ({'x'.join(map(str, r['shape']))})" if r["kind"] == "2d" else \
            f"bank {r['candidates']} (1-D)"
        t_rows.append([what, str(r["n"])] + [fmt(r[s]["median_ms"], 2) for s in SAMPLERS]
                      + [fmt(r["sg"]["median_ms"] / r["uniform"]["median_ms"], 1),
                         fmt(r["sag"]["median_ms"] / r["uniform"]["median_ms"], 1)])
    t1 = markdown_table(["candidates", "draws", "uniform ms", "SG ms", "SAG ms", "SG / uniform", "SAG / uniform"],
                        t_rows, "lrrrrrr")
    v_rows = []
    for r in report["variance"]:
        v_rows.append([str(r["stride"]), f"{r['class']} {r['class_name']}", r["statistic"], str(r["candidates"]),
                       fmt(r["sg"]["var_ratio"], 3), fmt(r["sag"]["var_ratio"], 3),
                       f"{r['sg']['bias_z']:+.1f} / {r['sag']['bias_z']:+.1f}"])
    t2 = markdown_table(["stride", "class", "statistic", "candidates", "Var SG / Var U", "Var SAG / Var U",
                         "bias z (SG / SAG)"], v_rows, "llllrrr")
    o = report["options"]
    rel = math.sqrt(4.0 / max(o["draws"] - 1, 1))
    return "\n".join([
        f"Measured {report['machine'].get('date')} with `{report['command']}`"
        + (" (**smoke run: not a measurement**)" if o.get("smoke") else "") + ".",
        "",
        f"- Machine: {format_machine(report['machine'])}.",
        "- Time of one call `sampler(mask, n)` (median over repeats, CPU): all-True 2D masks of "
        f"{o['images']} images; `n` = 256 (anchors) and 131072 (256 x 512 negatives); `bank`: the negatives' "
        "draw over a 1-D memory bank.",
        "",
        t1,
        "",
        *([f"- Side by side (issue 13), one call of each sampler per round, {len(report['comparison'])} rows each "
           "interleaved, medians (ms): ours with index strata on a 1-D mask of N candidates, with spatial strata "
           "on an all-True [16, H, W] mask of about N, uniform on the 1-D mask; official = `grid_monte_carlo_sample` "
           "/ `grid_as_monte_carlo_sample` of charlesyou999648/ARCO (`code/loss_helper.py`, imported at run time "
           "from a fetched copy; it receives only the count N)"
           + ("" if o.get("official") else " (**not timed in this run**: no `--official`)") + ".",
           "", format_comparison_markdown(report["comparison"]), ""] if report.get("comparison") else []),
        f"- Variance of the estimated class mean of a per-pixel statistic, {o['draws']} draws of {o['anchors']} "
        f"pixels per sampler, relative to uniform sampling (< 1: SG/SAG reduce the variance). Images: "
        f"{report['images']}. Feature map: a fixed random 3-layer conv net (seed 0) on the z-scored image; stride 4 = "
        f"average-pooled to the trainers' representation resolution. Relative standard error of each ratio about "
        f"{rel:.0%}; `bias z`: (mean estimate - true mean) / its standard error (|z| < 3 expected: unbiased).",
        "",
        t2,
    ])


def run(args) -> dict:
    # before torch starts its OpenMP threads (here or in the subprocesses): docs/small_compute.md
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    smoke = bool(args.smoke)
    sizes = [1e4, 1e5] if smoke and args.sizes == list(DEFAULT_SIZES) else args.sizes
    draws = 50 if smoke and args.draws == 1000 else args.draws
    t0 = time.time()
    print(f"Sampler timing ({len(sizes)} candidate counts)", flush=True)
    timing = timing_benchmark(sizes, images=args.images, min_time=0.05 if smoke else args.min_time,
                              bank_sizes=() if smoke else BANK_SIZES)
    print("Side by side with the official helper" + ("" if args.official else " (ours only: no --official)"),
          flush=True)
    comparison = comparison_benchmark(args.official, COMPARISON_CASES[:2] if smoke else COMPARISON_CASES,
                                      min_time=0.05 if smoke else 1.0, min_reps=3 if smoke else 7)
    acdc = args.acdc or shared_acdc_folder()
    source = args.source if args.source != "auto" else ("acdc" if acdc and not smoke else "phantom")
    if source == "acdc":
        if not acdc:
            raise SystemExit("--source acdc needs --acdc /path/to/ACDC_ssl4mis")
        images, labels, desc = load_acdc_slices(acdc)
    else:
        images, labels, desc = phantom_slices(4 if smoke else 8, 64 if smoke else 128)
    print(f"Sampler variance ({desc}; {draws} draws)", flush=True)
    variance = variance_benchmark(images, labels, args.strides, args.anchors, draws)
    report = {"machine": machine_info("cpu", threads),
              "command": command_line("samplers"),
              "options": {"sizes": sizes, "images": args.images, "draws": draws, "anchors": args.anchors,
                          "strides": args.strides, "source": source, "smoke": smoke,
                          "official": bool(args.official)},
              "images": desc, "timing": timing, "comparison": comparison, "variance": variance, "wall_s": round(time.time() - t0, 1)}
    md = format_samplers_markdown(report)
    out = os.path.abspath(args.out)
    save_json(report, os.path.join(out, "samplers.json"))
    with open(os.path.join(out, "samplers.md"), "w") as f:
        f.write(md + "\n")
    print("\n" + md, flush=True)
    update_docs_if_asked(args.update_docs, "samplers", md)
    print(f"\nResults: {os.path.join(out, 'samplers.json')} and samplers.md ({time.time() - t0:.0f} s)", flush=True)
    return report
