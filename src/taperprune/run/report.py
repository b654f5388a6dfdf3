"""Run directories → PNG plots and one self-contained HTML page (images embedded, no network)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..budget import NS, amount, format_macs  # noqa: E402
from ..files import atomic_path, write_atomic  # noqa: E402
from .deploy import slowdown_reason  # noqa: E402
from .rundir import RunFiles, read_run  # noqa: E402
from .schemas import FULL_KEY, REACHED_KEY  # noqa: E402

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _run_labels(runs: Sequence[RunFiles]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.path.parent.name}/{r.name}" for r in runs]


def _pct(label: str) -> str:
    return label.replace("pct", "%")


def plot_pareto(runs: Sequence[RunFiles], path: Path) -> Path:
    """Top-1 accuracy against MACs: unpruned, each snapshot before and after its fine-tune.

    One model (same unpruned MACs in every run): x is the share of its MACs; several
    models: x is absolute MACs.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    relative = len({r.summary["full_macs"] for r in runs}) == 1
    ticks: set[float] = set()
    for i, (run, label) in enumerate(zip(runs, _run_labels(runs), strict=True)):
        c = colors[i % len(colors)]
        full = run.summary["full_macs"]
        scale = 100.0 / full if relative else 1e-6
        xs = [full * scale] + [s.metrics["macs"] * scale for s in run.snapshots]
        ticks.update(xs)
        after = [run.summary["base_acc"]] + [s.metrics["acc_finetuned"] for s in run.snapshots]
        before = [s.metrics["acc_at_snapshot"] for s in run.snapshots]
        prefix = f"{label}: " if len(runs) > 1 else ""
        ax.plot(xs, after, "o-", color=c, label=f"{prefix}after fine-tune")
        ax.plot(xs[1:], before, "o--", color=c, mfc="white", label=f"{prefix}at snapshot")
        ax.plot(xs[:1], after[:1], "*", color=c, ms=15, label=f"{prefix}unpruned")
        if len(runs) == 1:
            for x, a in zip(xs, after, strict=True):
                ax.annotate(
                    f"{a:.2f}%",
                    (x, a),
                    textcoords="offset points",
                    xytext=(0, 9),
                    ha="center",
                    fontsize=8,
                )
    ax.set_xscale("log")
    if relative:
        ax.set_xticks(sorted(ticks), [f"{t:.3g}%" for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("MACs per image (% of the unpruned model's, log scale)")
    else:
        ax.set_xlabel("MACs per image (millions, log scale)")
    ax.set_ylabel("top-1 accuracy on the test set (%)")
    ax.set_title("Accuracy against compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_trace(run: RunFiles, path: Path) -> Path:
    """Budget and MACs, λ, taper rate and loss against the step."""
    rows = run.trace
    unit, full = _unit(run)  # the trace counts what the budgets count
    step = [r["step"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(7.5, 8.5), sharex=True)
    ax = axes[0]
    ax.plot(step, [100 * r["budget"] / full for r in rows], label="budget B(t)")
    ax.plot(step, [100 * r["macs"] / full for r in rows], "--", label=f"{unit} reached")
    ax.set_ylabel(f"% of unpruned {unit}")
    ax.legend(fontsize=8)
    # λ is 0 until the first channel is priced (warm-up): leave those steps out.
    axes[1].plot(step, [r["lam"] if r["lam"] > 0 else float("nan") for r in rows], color="C2")
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"λ (score per {unit[:-1] if unit == 'MACs' else 'param'})")
    axes[2].plot(step, [r["rate"] for r in rows], color="C3")
    paused = [r["step"] for r in rows if r["paused"]]
    if paused:
        axes[2].plot(paused, [0.0] * len(paused), "|", color="C3", ms=8, label="paused")
        axes[2].legend(fontsize=8)
    axes[2].set_ylabel("taper rate\n(budget share / step)")
    axes[3].plot(step, [r["loss"] for r in rows], alpha=0.35, label="loss")
    axes[3].plot(step, [r["loss_ema"] for r in rows], label="loss EMA")
    axes[3].set_ylabel("training loss")
    axes[3].set_xlabel("training step (optimizer steps)")
    axes[3].legend(fontsize=8)
    for snap in run.snapshots:
        for a in axes:
            a.axvline(snap.metrics["step"], color="grey", lw=0.8, ls=":")
        axes[0].annotate(
            _pct(snap.label),
            (snap.metrics["step"], 100),
            textcoords="offset points",
            xytext=(2, -10),
            fontsize=8,
            color="grey",
        )
    for a in axes:
        a.grid(True, alpha=0.3)
    axes[0].set_title("The taper: budget, price of a MAC, rate and loss (dotted: snapshots)")
    return _save(fig, path)


def plot_widths(run: RunFiles, path: Path) -> Path:
    """Per conv/linear layer: original output channels and those kept at each budget."""
    layers = [
        (name, entry["width"][1])
        for name, entry in run.base_plan["layers"].items()
        if entry.get("kind") != "norm"
    ]
    n = len(layers)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.3 * n * (1 + 0.2 * len(run.snapshots)))))
    k = len(run.snapshots) + 1
    h = 0.8 / k
    ys = range(n)
    ax.barh([y for y in ys], [w for _, w in layers], height=h, color="lightgrey", label="original")
    for j, snap in enumerate(run.snapshots, start=1):
        kept = [len(snap.plan["layers"][name]["out"]) for name, _ in layers]
        ax.barh([y + j * h for y in ys], kept, height=h, label=f"at {_pct(snap.label)} of MACs")
    ax.set_yticks([y + 0.4 - h / 2 for y in ys], [name for name, _ in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.set_title("Layer widths: original and kept at each budget")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _latency_cell(metrics: dict[str, Any]) -> str:
    """Every runtime's speed-up; a slowdown in red, its likely reason on hover and below."""
    speed = metrics.get("speedup") or {}
    if not speed:
        return "–"
    why = slowdown_reason(metrics.get("aligned_widths"))
    parts = []
    for key, x in speed.items():
        text = f"{html.escape(key)}: {x:.2f}×"
        if x < 1:
            text = f'<span class="slow" title="{html.escape(why)}">{text}, slower</span>'
        parts.append(text)
    slow = min(speed.values()) < 1
    note = f'<br><small class="slow">likely {html.escape(why)}</small>' if slow else ""
    return "<br>".join(parts) + note


def _unit(run: RunFiles) -> tuple[str, int]:
    """What the run's budgets count (MACs, params or ns of modelled latency) and the
    unpruned model's count of it."""
    unit = run.summary.get("unit", "MACs")
    return unit, int(run.summary[FULL_KEY[unit]])


def _target_cell(metrics: dict[str, Any], unit: str) -> str:
    """The budget; for latency, with the snapshot's modelled and measured latency."""
    if unit != "ns":
        return format_macs(metrics["target"])
    measured = metrics.get("measured_ns") or 0
    slow = measured > 1.05 * metrics["target"]
    text = (
        f"{amount(metrics['target'], NS)}<br><small>modelled {amount(metrics['predicted_ns'], NS)}"
        f", measured {amount(measured, NS)}</small>"
    )
    return f'<span class="slow">{text}</span>' if slow else text


def _snapshot_table(run: RunFiles) -> str:
    full = run.summary["full_macs"]
    unit, ufull = _unit(run)
    head = (
        f"<tr><th>snapshot</th><th>target {'latency' if unit == 'ns' else unit}</th>"
        "<th>MACs reached</th><th>% of unpruned</th>"
        "<th>budget error</th><th>params</th><th>top-1 at snapshot</th>"
        "<th>after fine-tune</th><th>MAC reduction</th><th>measured speed-up</th>"
        "<th>ONNX check</th></tr>"
    )
    rows = [
        f"<tr><td>unpruned</td><td>–</td><td>{format_macs(full)}</td><td>100%</td><td>–</td>"
        f"<td>{run.summary['full_params']:,}</td><td>–</td>"
        f"<td>{run.summary['base_acc']:.2f}%</td><td>1×</td><td>1×</td><td>–</td></tr>"
    ]
    for s in run.snapshots:
        m = s.metrics
        check = m.get("onnx_check")
        check_txt = ("–" if not check else ("passed" if check["passed"] else "<b>FAILED</b>")) + (
            f" (max |Δ| {check['max_abs_diff']:.1e})" if check else ""
        )
        rows.append(
            f"<tr><td>{html.escape(_pct(s.label))}</td><td>{_target_cell(m, unit)}</td>"
            f"<td>{format_macs(m['macs'])}</td><td>{100 * m['macs'] / full:.2f}%</td>"
            f"<td>{100 * (int(m[REACHED_KEY[unit]]) - m['target']) / ufull:+.3f}%</td>"
            f"<td>{m['params']:,}</td>"
            f"<td>{m['acc_at_snapshot']:.2f}%</td><td>{m['acc_finetuned']:.2f}%</td>"
            f"<td>{full / m['macs']:.2f}×</td><td>{_latency_cell(m)}</td><td>{check_txt}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


_CSS = """
.slow{color:#c00}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:960px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.3em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
.meta{color:#555}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
"""

# Lets a headless browser (and the tests) see that every image decoded.
_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesDecoded = ok + '/' + imgs.length;
});
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}<script>{_SCRIPT}</script></body></html>\n"
    )


def _run_meta(run: RunFiles) -> str:
    c, s = run.config, run.summary
    return (
        f'<p class="meta">model <b>{html.escape(str(c.get("model")))}</b> on '
        f"<b>{html.escape(str(c.get('data')))}</b> · unpruned {format_macs(s['full_macs'])} MACs, "
        f"{s['full_params']:,} params, top-1 {s['base_acc']:.2f}% · schedule "
        f"{html.escape(str(c.get('schedule')))} · whole run {s['seconds']:.0f} s</p>"
    )


def write_report(run_paths: Sequence[str | Path], out: Path | None = None) -> Path:
    """Write report.html and its PNGs; one run gets the full page, several get an overlay."""
    runs = [read_run(p) for p in run_paths]
    if not runs:
        raise ValueError("write_report needs at least one run")
    out = Path(out) if out is not None else runs[0].path
    out.mkdir(parents=True, exist_ok=True)
    pareto = plot_pareto(runs, out / "pareto.png")
    if len(runs) == 1:
        run = runs[0]
        trace = plot_trace(run, out / "trace.png")
        widths = plot_widths(run, out / "widths.png")
        body = (
            f"<h1>taperprune report — {html.escape(run.name)}</h1>{_run_meta(run)}"
            f"<h2>Snapshots</h2>{_snapshot_table(run)}"
            "<p class='meta'>Budget error = MACs reached − target, as a share of the unpruned "
            "MACs. Speed-up: median latency of the unpruned model over the snapshot's, measured "
            "on this machine (see metrics.json for every runtime and batch size).</p>"
            f"<h2>Accuracy against compute</h2>{_img(pareto, 'accuracy against MACs')}"
            f"<h2>The taper</h2>{_img(trace, 'taper trace')}"
            f"<h2>Layer widths</h2>{_img(widths, 'layer widths')}"
            f"<h2>Settings (config.yaml)</h2><pre>"
            f"{html.escape((run.path / 'config.yaml').read_text())}</pre>"
        )
        title = f"taperprune — {run.name}"
    else:
        labels = _run_labels(runs)
        parts = [
            f"<h1>taperprune — {len(runs)} runs compared</h1>",
            f"<h2>Accuracy against compute</h2>{_img(pareto, 'accuracy against MACs')}",
        ]
        for run, label in zip(runs, labels, strict=True):
            parts.append(f"<h2>{html.escape(label)}</h2>{_run_meta(run)}{_snapshot_table(run)}")
        body = "".join(parts)
        title = f"taperprune — {', '.join(labels)}"
    path = out / "report.html"
    write_atomic(path, _page(title, body))
    return path
