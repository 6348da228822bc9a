"""The leaderboard's static page: ``index.html``, one self-contained file (no server, no network).

Tables sort on a click on their header (a few lines of vanilla JavaScript; cells carry their
number in ``data-v``). Plots are drawn with matplotlib and inlined as SVG: score per category,
score per layer, and throughput against quality. They are deterministic: the SVG ids come from
a fixed ``svg.hashsalt``, the date is left out, glyphs are paths (no font lookup in the browser),
so building twice gives the same bytes.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

from featbench.board.tables import fmt, fmt_budget_stops, fmt_count, fmt_score, fmt_tasks
from featbench.scoring.summaries import LOWER_IS_BETTER

_RC = {
    "svg.hashsalt": "featbench-leaderboard",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th { background: #f2f2f2; cursor: pointer; user-select: none; position: relative; padding-right: 1.3em; }
th::after { content: "\\2195"; position: absolute; right: 0.3em; color: #999; }
th[aria-sort="ascending"]::after { content: "\\25B2"; color: #333; }
th[aria-sort="descending"]::after { content: "\\25BC"; color: #333; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.plot svg { max-width: 100%; height: auto; }
.scroll { overflow-x: auto; max-width: 100%; }
.excluded { background: #fff4f4; border: 1px solid #e0b4b4; padding: 0.5em 1em; }
"""

# Click a header: sort by its column (numbers by data-v, else text); click again: reverse.
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : (v === "" ? null : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _svg(fig) -> str:
    """The figure as inline SVG markup (no XML prolog), with deterministic ids and no date."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    start = text.index("<svg")
    return text[start:].strip()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _colors(models: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(models))}


def _direction(metric: str) -> str:
    return "lower is better" if metric in LOWER_IS_BETTER else "higher is better"


def plot_categories(summary: dict[str, Any]) -> str:
    """Grouped bars: per headline score, each category's mean per model, with its interval."""
    import numpy as np

    metrics, categories, models = summary["metrics"], summary["categories"], summary["models"]
    colors = _colors([e["model"] for e in models])
    fig = _figure(3.4 * len(metrics) + 1.6, 3.0)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(categories))
    for ax, metric in zip(axes, metrics):
        for i, e in enumerate(models):
            vals, lo, hi = [], [], []
            for c in categories:
                s = e["categories"][c][metric]
                v = s["value"]
                vals.append(np.nan if v is None else v)
                lo.append(0 if v is None or s["ci_low"] is None else v - s["ci_low"])
                hi.append(0 if v is None or s["ci_high"] is None else s["ci_high"] - v)
            ax.bar(x - 0.4 + width * (i + 0.5), vals, width, yerr=[lo, hi], color=colors[e["model"]],
                   label=e["model"], error_kw={"elinewidth": 0.8, "capsize": 1.5})
        ax.set_xticks(x, categories)
        ax.set_title(f"{metric} ({_direction(metric)})")
        ax.axhline(0, color="#888", linewidth=0.6)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _svg(fig)


def plot_layers(summary: dict[str, Any]) -> str:
    """Lines: one row of panels per backbone, one panel per headline score, each model's mean
    per layer (layers in suite order)."""
    metrics, layers, models = summary["metrics"], summary["layers"], summary["models"]
    colors = _colors([e["model"] for e in models])
    backbones = list(dict.fromkeys(k.split("/")[0] for k in layers))
    fig = _figure(3.4 * len(metrics) + 1.6, 2.6 * len(backbones))
    grid = fig.subplots(len(backbones), len(metrics), squeeze=False)
    for row, backbone in zip(grid, backbones):
        keys = [k for k in layers if k.split("/")[0] == backbone]
        for ax, metric in zip(row, metrics):
            if all(e["layers"][k][metric]["value"] is None for e in models for k in keys):
                ax.axis("off")
                ax.text(0.5, 0.5, f"{backbone}: no {metric}", ha="center", va="center", color="#888",
                        transform=ax.transAxes)
                continue
            for e in models:
                ys = [e["layers"][k][metric]["value"] for k in keys]
                ax.plot(range(len(keys)), [float("nan") if y is None else y for y in ys], marker="o",
                        color=colors[e["model"]], linewidth=1.2, markersize=4, label=e["model"])
            ax.set_xticks(range(len(keys)), [k.split("/", 1)[1] for k in keys])
            ax.set_xlim(-0.3, len(keys) - 0.7)
            ax.set_title(f"{backbone}: {metric}", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=colors[e["model"]], marker="o", markersize=4, label=e["model"]) for e in models]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.91, 0.88), frameon=False)
    fig.subplots_adjust(hspace=0.45, right=0.9)
    return _svg(fig)


def plot_throughput(summary: dict[str, Any]) -> str:
    """Scatter: predict throughput (log) against mean rank, and fit time against mean rank."""
    models = [e for e in summary["models"] if e["mean_rank"]["value"] is not None]
    colors = _colors([e["model"] for e in summary["models"]])
    fig = _figure(8.6, 3.4)
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "predict_per_s_mean", "predicted maps / s (mean over tasks)"),
                           (axes[1], "fit_s_mean", "fit seconds / task (mean)")):
        for e in models:
            if e[key] is None or e[key] <= 0:
                continue
            r = e["mean_rank"]
            ax.errorbar([e[key]], [r["value"]], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                        fmt="o", color=colors[e["model"]], capsize=2, markersize=5)
            ax.annotate(e["model"], (e[key], r["value"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("mean rank (1 = best)")
        ax.invert_yaxis()
    axes[0].set_title("quality against prediction throughput")
    axes[1].set_title("quality against fitting cost")
    return _svg(fig)


def _cell(text: str, value: Any = None, numeric: bool = False) -> str:
    attr = ""
    if numeric:
        attr = f' data-v="{"" if value is None else repr(float(value))}"'
    return f"<td{attr}>{html.escape(text)}</td>"


def _table(table_id: str, headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return (f'<div class="scroll"><table class="sortable" id="{table_id}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>")


def _main_table(track: str, summary: dict[str, Any]) -> str:
    metrics, categories = summary["metrics"], summary["categories"]
    headers = ["model", "version", "tasks ok", "mean rank [95 %]"] + [f"{c} {m}" for c in categories for m in metrics]
    headers += ["params", "fit s / task", "budget stops", "predict maps / s"]
    rows = []
    for e in summary["models"]:
        r = e["mean_rank"]
        rank = "-" if r["value"] is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        row = [_cell(e["model"]), _cell(e["version"]), _cell(fmt_tasks(e), e["tasks_ok"], True),
               _cell(rank, r["value"], True)]
        row += [_cell(fmt_score(e["categories"][c][m]), e["categories"][c][m]["value"], True)
                for c in categories for m in metrics]
        row += [_cell(fmt_count(e["n_params"]), e["n_params"], True), _cell(fmt(e["fit_s_mean"], 2), e["fit_s_mean"], True),
                _cell(fmt_budget_stops(e), e["budget_stops"], True),
                _cell(fmt(e["predict_per_s_mean"], 0), e["predict_per_s_mean"], True)]
        rows.append(row)
    return _table(f"{track}-models", headers, rows)


def _layer_table(track: str, summary: dict[str, Any], key: str, index: int) -> str:
    metrics = summary["metrics"]
    rows = [[_cell(e["model"]), _cell(str(e["layer_tasks_ok"][key]), e["layer_tasks_ok"][key], True)]
            + [_cell(fmt_score(e["layers"][key][m]), e["layers"][key][m]["value"], True) for m in metrics]
            for e in summary["models"]]
    return _table(f"{track}-layer-{index}", ["model", "tasks ok", *metrics], rows)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render_html(board: dict[str, Any]) -> str:
    """The whole page as one string."""
    import matplotlib

    s = board["suite"]
    title = f"featbench leaderboard: {s['name']} v{s['version']}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">Suite spec <code>{s["spec_sha256"][:16]}</code>, data format {s["data_format_version"]}; '
             f"built by {html.escape(board['built_by'])} from {len(board['results'])} result file(s). "
             "Scores: means over each model's scored tasks (failed tasks count as missing) with the mean of the "
             "tasks' 95 % bootstrap interval ends. Mean rank: 1 = best, a missing score ranks last, over the tasks "
             "a model applies to (see tasks ok); its interval comes from a seeded bootstrap over tasks and each task's score interval. Click a column header to sort.</p>"]
    if board["excluded"]:
        items = "".join(f"<li><code>{html.escape(e['file'])}</code>: {html.escape(e['reason'])}</li>"
                        for e in board["excluded"])
        parts.append(f'<div class="excluded"><strong>Left out</strong><ul>{items}</ul></div>')
    if board["hash_warnings"]:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in board["hash_warnings"])
        parts.append(f'<div class="excluded"><strong>Data warnings</strong><ul>{items}</ul></div>')
    with matplotlib.rc_context(_RC):
        for track, summary in board["tracks"].items():
            name = f"{track.capitalize()} track"
            parts.append(f'<h2 id="{_anchor(name)}">{name}</h2>')
            parts.append(f"<p>{len(summary['models'])} model(s), {summary['n_tasks']} tasks. Headline scores: "
                         + ", ".join(f"<code>{m}</code> ({_direction(m)})" for m in summary["metrics"]) + ".</p>")
            parts.append(_main_table(track, summary))
            if summary["models"] and summary["metrics"]:
                parts.append(f'<h3>Score per manipulation category</h3>\n<div class="plot">{plot_categories(summary)}</div>')
                parts.append(f'<h3>Score per layer</h3>\n<div class="plot">{plot_layers(summary)}</div>')
                parts.append(f'<h3>Throughput against quality</h3>\n<div class="plot">{plot_throughput(summary)}</div>')
            parts.append(f"<h3>{name} per layer</h3>")
            for i, key in enumerate(summary["layers"]):
                parts.append(f"<h4>{html.escape(key)}</h4>")
                parts.append(_layer_table(track, summary, key, i))
    if not board["tracks"]:
        parts.append("<p>No result admitted yet.</p>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{_JS}</script>\n</body>\n</html>\n")
