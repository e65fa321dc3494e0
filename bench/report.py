"""The report of `bench/run.sh`: every result file (bench/results.py) in a directory as a markdown
table with its hardware and baseline, plus one PNG plot per benchmark (drawn here from its "plot" spec, or by the benchmark itself as
DIR/<bench>.png).

    python bench/report.py DIR        # writes DIR/report.md and DIR/<bench>.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def plot(result: dict, file: Path) -> None:
    """A bar chart of `plot.value` per `plot.label`, or stacked bars of the `plot.stack` columns."""
    from matplotlib.figure import Figure

    spec, rows = result["plot"], result["rows"]
    labels = [str(r[spec["label"]]) for r in rows]
    fig = Figure(figsize=(max(5, 1.2 * len(rows) + 2), 4), layout="constrained")
    ax = fig.subplots()
    if "stack" in spec:
        bottom = [0.0] * len(rows)
        for col in spec["stack"]:
            values = [float(r.get(col) or 0) for r in rows]
            ax.bar(labels, values, bottom=bottom, label=col)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.legend(fontsize=8)
    else:
        ax.bar(labels, [float(r[spec["value"]]) for r in rows])
    ax.set(ylabel=spec.get("ylabel", ""), title=result["title"])
    ax.title.set_fontsize(9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.savefig(file, dpi=100)


def report(directory: Path) -> Path:
    sections = [f"# fastprod benchmarks ({directory.name})", ""]
    for path in sorted(directory.glob("*.json")):
        result = json.loads(path.read_text())
        if "bench" not in result or not result.get("rows"):
            continue
        columns = [c for c in result["rows"][0] if c != "label"]
        sections += [f"## {result['bench']}: {result['title']}", "",
                     f"Hardware: {result['hardware']}. Baseline: {result['baseline']}.", "",
                     "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        sections += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in result["rows"]]
        png = directory / f"{result['bench']}.png"
        if result.get("plot"):
            plot(result, png)
        if png.is_file():  # ours, or one the benchmark drew itself (bench/scale.py)
            sections += ["", f"![{result['bench']}]({png.name})"]
        sections.append("")
    out = directory / "report.md"
    out.write_text("\n".join(sections))
    return out


if __name__ == "__main__":
    print(report(Path(sys.argv[1])))
