"""The tables of ``nnunet_semicl evaluate``: the papers' layout (``| Avg | RV | Myo | LV |``, cells ``DSC/ASD``) for
the terminal, and the markdown report written beside the JSON (all metrics, per case)."""
from typing import List, Tuple

METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")
#: names the papers use in their tables, for the dataset.json names of our converters
PAPER_NAMES = {"RV": "RV", "MLV": "Myo", "LVC": "LV", "left_atrium": "LA"}


def _fmt(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    m = stat["mean"]
    if m != m:
        return "n/a"
    s = f"{m * scale:.{digits}f}"
    return s + ("*" if stat.get("n_undefined") else "")


def _columns(result: dict) -> List[Tuple[str, str]]:
    return [(k, PAPER_NAMES.get(v, v)) for k, v in result["labels"].items()]


def paper_table(result: dict) -> str:
    """``| Method | Avg | RV | Myo | LV |`` with ``DSC (%) / ASD (voxel)`` cells, like the papers' tables."""
    cols = _columns(result)
    head = "| Method | Avg | " + " | ".join(n for _, n in cols) + " |"
    sep = "|---" * (len(cols) + 2) + "|"
    cell = lambda d: f"{_fmt(d['dice'], 100)}/{_fmt(d['asd_voxel'], 1, 3)}"
    row = f"| {result['method']} | {cell(result['average'])} | " + " | ".join(
        cell(result["per_class"][k]) for k, _ in cols) + " |"
    return "\n".join([head, sep, row])


def markdown_report(result: dict) -> str:
    cols = _columns(result)
    lines = [f"# Evaluation: {result['method']}", "",
             f"- predictions: `{result['prediction_folder']}`", f"- reference: `{result['reference_folder']}`",
             f"- cases: {result['n_cases']}; classes: " + ", ".join(f"{k} {n}" for k, n in cols),
             f"- metrics: {result['library']}; empty-mask convention: `{result['convention']}` "
             f"(see docs/evaluation.md)", "",
             "## Paper layout: DSC (%) / ASD (voxel)", "", paper_table(result), "",
             "## All metrics (mean ± std over cases)", "",
             "| Metric | Avg | " + " | ".join(n for _, n in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    rows = (("DSC (%)", "dice", 100, 2), ("Jaccard (%)", "jaccard", 100, 2), ("HD95 (mm)", "hd95_mm", 1, 2),
            ("ASD (mm)", "asd_mm", 1, 3), ("HD95 (voxel)", "hd95_voxel", 1, 2), ("ASD (voxel)", "asd_voxel", 1, 3))

    def ms(d, scale, digits):
        if d["mean"] != d["mean"]:
            return "n/a"
        return f"{_fmt(d, scale, digits)} ± {d['std'] * scale:.{digits}f}"

    for title, m, scale, digits in rows:
        lines.append(f"| {title} | {ms(result['average'][m], scale, digits)} | " + " | ".join(
            ms(result["per_class"][k][m], scale, digits) for k, _ in cols) + " |")
    undefined = {(k, m): result["per_class"][k][m]["n_undefined"] for k, _ in cols for m in METRICS
                 if result["per_class"][k][m]["n_undefined"]}
    lines.append("")
    if undefined:
        lines.append("\\* some values were undefined (an empty prediction or reference mask) and are left out of "
                     "that mean: " + "; ".join(f"{dict(cols)[k]} {m}: {n}" for (k, m), n in undefined.items()))
        lines.append("")
    lines += ["## Per case: DSC (%) / ASD (voxel)", "", "| Case | " + " | ".join(n for _, n in cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for c, per in sorted(result["per_case"].items()):
        cells = []
        for k, _ in cols:
            d, a = per[k]["dice"], per[k]["asd_voxel"]
            cells.append(f"{'n/a' if d != d else f'{d * 100:.2f}'}/{'n/a' if a != a else f'{a:.3f}'}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if result["ignored_predictions"]:
        lines += ["", f"Predictions without reference (not evaluated): {', '.join(result['ignored_predictions'])}"]
    if result["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
