"""The report of a train.py sweep: ``sweep.md`` (every trial, best first, with its score's 95% interval) and
``sweep.png`` (the score against each parameter that varied), written into the sweep folder when it ends.

Installed as a Hydra callback by ``conf/train.yaml``; it reads the ``score.json`` each trial wrote
(``huatuo.evaluation.after_training``), so it works for any sweeper (Optuna, the basic grid) and any launcher.
A sweep with no ``score.json`` (a prepare sweep) gets no report.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from huatuo.core.logs import get_logger
from huatuo.data.sources import SourceSpec
from huatuo.evaluation.after_training import SCORE_FILE

log = get_logger(__name__)

REPORT, PLOT = "sweep.md", "sweep.png"


class SweepReport(Callback):
    """Writes ``sweep.md`` and ``sweep.png`` into the sweep folder once every trial has run."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Collect the trials' scores and write the report (nothing without scores)."""
        given = [o for o in config.hydra.overrides.get("hydra", []) if not o.startswith("hydra.mode=")]
        arguments = [shlex.quote(str(o)) for o in (*given, *config.hydra.overrides.get("task", []))]
        path = write_sweep_report(Path(config.hydra.sweep.dir), " ".join(["python train.py -m", *arguments]))
        if path is not None:
            log.info("sweep report: %s", path)


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every trial's ``score.json`` under the sweep folder, with its folder relative to it as ``trial``."""
    trials = []
    for path in sorted(sweep_dir.glob(f"**/{SCORE_FILE}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["trial"] = str(path.parent.relative_to(sweep_dir))
        trials.append(record)
    return sorted(trials, key=lambda t: (len(t["trial"]), t["trial"]))  # 2 before 10


def parameters(trials: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per parameter that differs between trials (each source's priority, any other override), its values."""
    table: list[dict[str, Any]] = []
    for trial in trials:
        row = {f"{source}.priority": value for source, value in trial["priorities"].items()}
        for override in trial.get("overrides", []):
            key, _, value = override.partition("=")
            if not key.endswith(".priority") and key.lstrip("+~") != "evaluate_after":
                row[key.lstrip("+~")] = _number(value)
        table.append(row)
    keys = list(dict.fromkeys(k for row in table for k in row))
    return {k: [row.get(k) for row in table] for k in keys if len({json.dumps(row.get(k)) for row in table}) > 1}


def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def write_sweep_report(sweep_dir: Path, command: str) -> Path | None:
    """Write ``sweep.md`` and ``sweep.png`` for the trials in ``sweep_dir``; returns the report, or None."""
    trials = read_trials(sweep_dir)
    scored = [t for t in trials if isinstance(t.get("value"), int | float) and math.isfinite(t["value"])]
    if not scored:
        return None
    direction, objective = scored[0]["direction"], scored[0]["objective"]
    ranked = sorted(scored, key=lambda t: -t["value"] if direction == "maximize" else t["value"])
    varying = parameters(ranked)
    percent = objective.endswith(("accuracy", "win_rate"))
    plot = plot_sweep(ranked, varying, sweep_dir / PLOT, objective, percent)
    best = ranked[0]

    def shown(value: float) -> str:
        return f"{100 * value:.1f}%" if percent else f"{value:.4f}"

    def interval(trial: Mapping[str, Any]) -> str:
        ci = trial.get("ci95")
        return f"{shown(ci[0])}–{shown(ci[1])}" if ci else ""

    keys = list(varying)
    lines = [
        f"# Sweep: {len(scored)} trials, {objective} ({direction})",
        "",
        f"- command: `{command}`",
        f"- best: trial {best['trial']} (`{best['run_dir']}`), {objective} **{shown(best['value'])}**"
        + (f" (95% CI {interval(best)}, {best['n']} questions of {best['suite']})" if best.get("ci95") else ""),
        "- best priorities: " + ", ".join(f"{k} {_priority(v)}" for k, v in best["priorities"].items()),
    ]
    if best.get("ci95"):
        lines.append(
            "- trials whose intervals overlap the best one's are not told apart by this exam: confirm on a larger "
            "suite (or more seeds) before trusting the order"
        )
        lines.append(
            "- the best score is optimistic: it was chosen for being the highest on this exam; report the final "
            "number on questions the search did not see (another suite, or a held-out part of this one)"
        )
    if len(trials) > len(scored):
        lines.append(f"- {len(trials) - len(scored)} trial(s) without a score (failed before evaluating)")
    lines += [
        "",
        "| rank | trial | " + objective + " | 95% CI | " + " | ".join(keys) + " |",
        "| ---: | --- | ---: | --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for rank, trial in enumerate(ranked, start=1):
        values = [_cell(varying[k][rank - 1]) for k in keys]
        cells = [str(rank), trial["trial"], shown(trial["value"]), interval(trial), *values]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![{objective} against each parameter]({plot.name})", ""]
    path = sweep_dir / REPORT
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _priority(value: Any) -> str:
    if value is None:  # a score.json written before trials recorded the default of a priority the YAML omitted
        return f"{SourceSpec.priority:g} (default)"
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot_sweep(
    trials: Sequence[Mapping[str, Any]], varying: Mapping[str, list[Any]], path: Path, objective: str, percent: bool
) -> Path:
    """One panel per numeric parameter that varied: the score of each trial against its value, the best starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    numeric = {k: v for k, v in varying.items() if all(isinstance(x, int | float) for x in v)} or {"trial": None}
    columns = min(3, len(numeric))
    rows = math.ceil(len(numeric) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    scale = 100 if percent else 1
    scores = [scale * t["value"] for t in trials]
    errors = None
    if all(t.get("ci95") for t in trials):
        errors = [
            [scale * (t["value"] - t["ci95"][0]) for t in trials],
            [scale * (t["ci95"][1] - t["value"]) for t in trials],
        ]
    for ax, (key, values) in zip(axes.flat, numeric.items(), strict=False):
        xs = values if values is not None else list(range(len(trials)))
        ax.errorbar(xs, scores, yerr=errors, fmt="o", color="#4C72B0", ecolor="#999999", capsize=2)
        ax.plot([xs[0]], [scores[0]], marker="*", markersize=14, color="#C44E52", linestyle="none", label="best")
        if key.endswith("priority") and min(xs) > 0:  # priorities act through their ratios: doublings read evenly
            ax.set_xscale("log", base=2)
            ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(key)
        ax.set_ylabel(f"{objective}{' %' if percent else ''}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(numeric) :]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{len(trials)} trials: {objective} against each parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
