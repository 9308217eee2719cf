"""Benchmark results as numbers and text: summaries with 95% intervals, mean curves, markdown
tables, JSON-ready values."""

import math

import numpy as np

from .scene import CHANCE_ROWS, LOCALIZATION, METRICS, MIN_GAP

HEADERS = {"pointing": "pointing ↑", "energy": "energy ↑", "iou": "IoU ↑", "deletion": "deletion AUC ↓",
           "insertion": "insertion AUC ↑", "prompt_spearman": "prompt-rand. ρ"}


def summarise(records, rows, metrics=METRICS):
    """{row: {metric: {mean, ci95, n}}} over records' ``metrics`` (NaN values left out)."""
    return {row: {metric: stats([r["metrics"][row].get(metric, math.nan) for r in records])
                  for metric in metrics if any(metric in r["metrics"][row] for r in records)}
            for row in rows}


def stats(values):
    """Mean, 95% normal-approximation half-width and count of the non-NaN values."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if values.size == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    ci = 1.96 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return {"mean": float(values.mean()), "ci95": float(ci), "n": int(values.size)}


def mean_curves(curves):
    """{row: [(deletion [k+1], insertion [k+1]) per scene]} → {row: mean curves} over scenes whose
    curves could be normalised."""
    out = {}
    for row, pairs in curves.items():
        valid = [pair for pair in pairs if not np.isnan(pair[0]).all()]
        out[row] = {"deletion": np.mean([p[0] for p in valid], axis=0) if valid else None,
                    "insertion": np.mean([p[1] for p in valid], axis=0) if valid else None}
    return out


def mean_by_objects(records):
    out = {"all": float(np.mean([r["area_share"] for r in records]))}
    for objects in sorted({r["objects"] for r in records}):
        out[f"objects_{objects}"] = float(np.mean([r["area_share"] for r in records if r["objects"] == objects]))
    return out


def markdown(result):
    """The benchmark result as markdown tables (what ``clipviz bench`` prints)."""
    lines = []
    config = result["config"]
    if result.get("warning"):
        lines += [f"**{result['warning']}**", ""]
    if result["kind"] == "photos":
        lines += [f"Localization on {len(result['items'])} (photo, category) pairs from {config['data']} "
                  f"— model {config['model']}; seen pixels only.", ""]
        lines += _table(result["summary"]["all"], LOCALIZATION, result["area_share"])
    else:
        lines += [f"clipviz bench — model {config['model']}, {config['n']} scenes "
                  f"({config['scenes']}); one present object queried per scene.", ""]
        timing = result.get("timing", {}).get("ms_per_explanation", {})
        lines += _table(result["summary"]["all"], METRICS, result["area_share"]["all"], timing)
        counts = {m: next(iter(result["summary"]["all"].values()))[m]["n"] for m in ("deletion", "insertion")}
        if any(count < config["n"] for count in counts.values()):
            lines += ["", f"Deletion / insertion AUC over {counts['deletion']} / {counts['insertion']} of the "
                          f"{config['n']} scenes: in the others the full image scores less than {MIN_GAP} above "
                          "the fully replaced one."]
        for key, summary in result["summary"].items():
            if key.startswith("objects_"):
                k = key.split("_")[1]
                count = next(iter(next(iter(summary.values())).values()))["n"]
                lines += ["", f"{k}-object scenes only (n = {count}):", ""]
                lines += _table(summary, METRICS, result["area_share"][key])
        if result.get("cascade"):
            lines += ["", f"Cascading randomisation (Spearman ρ with the original map; blocks re-drawn from the "
                          f"last down, cumulatively; {config['sanity_scenes']} scenes). Near 1 = the map ignores "
                          "the weights.", ""]
            blocks = next(iter(result["cascade"].values()))["blocks"]
            last = blocks[0]
            lines.append("| method | " + " | ".join(f"blocks {b}–{last}" if b != last else f"block {b}"
                                                     for b in blocks) + " |")
            lines.append("|---" * (len(blocks) + 1) + "|")
            for method, row in result["cascade"].items():
                lines.append(f"| {method} | " + " | ".join(_number(v) for v in row["spearman"]) + " |")
    if result.get("notes"):
        lines += [""] + [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def _table(summary, metrics, area, timing=None):
    columns = [m for m in metrics if any(m in row for row in summary.values())]
    header = ["method"] + [HEADERS[m] for m in columns] + (["ms / expl."] if timing else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row, values in summary.items():
        name = row if row not in CHANCE_ROWS else f"*{row}* (chance)"
        cells = [_cell(values.get(m)) for m in columns]
        if timing:
            cells.append(f"{timing[row]:.1f}" if row in timing else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    area_cells = [_number(area) if m in ("pointing", "energy") else "—" for m in columns]
    lines.append("| *mask area share* (chance of a uniform map) | " + " | ".join(area_cells)
                 + (" | — |" if timing else " |"))
    return lines


def _cell(stats):
    if not stats or stats["n"] == 0:
        return "—"
    ci = "" if stats["ci95"] is None or math.isnan(stats["ci95"]) else f" ± {stats['ci95']:.3f}"
    return f"{stats['mean']:.3f}{ci}"


def _number(value):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def clean(value):
    """JSON-ready: numpy → Python numbers, NaN → None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value
