"""The report folder of a simulation: summary.md, measurements.csv, summary.json and PNG plots.

Plots use matplotlib's Agg backend, so a report is written on a machine
without a display:

- ``convergence.png``: share of live nodes converged over time, per run,
  with the start of each event marked;
- ``quality.png``: mean 3-way TVD and AUC against the sweep variable, or per
  node when the scenario has no sweep, with the real-data reference;
- ``rejections.png``: releases rejected by reason, summed over nodes;
- ``traffic.png``: bytes each node sent.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from simulations.runner import RunResult
from simulations.scenario import Scenario

log = logging.getLogger(__name__)

CSV_FIELDS = ("run", "t_s", "event", "action", "metric", "node", "value")


def write_report(folder: Path, scenario: Scenario, results: Sequence[RunResult], *, reference: dict,
                 command: str, wall_s: float) -> Path:
    """Write every report file into ``folder``; return the path of summary.md."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "measurements.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in results:
            writer.writerows(result.rows)
    (folder / "summary.json").write_text(json.dumps(
        {"scenario": scenario.name, "seed": scenario.seed, "reference": reference,
         "runs": {r.label: r.summary for r in results}}, indent=2, sort_keys=True, default=str), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    _plot_convergence(folder / "convergence.png", results)
    _plot_quality(folder / "quality.png", scenario, results, reference)
    _plot_rejections(folder / "rejections.png", results)
    _plot_traffic(folder / "traffic.png", results)

    path = folder / "summary.md"
    path.write_text(_markdown(scenario, results, reference=reference, command=command, wall_s=wall_s),
                    encoding="utf-8")
    return path


# Markdown ----------------------------------------------------------------------


def _markdown(scenario: Scenario, results: Sequence[RunResult], *, reference: dict, command: str,
              wall_s: float) -> str:
    lines = [
        f"# Simulation: {scenario.name}",
        "",
        scenario.description.strip() or "(no description)",
        "",
        f"Repeat with: `{command}` (seed {scenario.seed}; node keys, release ids and model ids differ between "
        "runs, the split, the seeded noise and the event order do not).",
        f"Wall time {wall_s:.0f} s. Data: {scenario.data.train.name}, schema {scenario.data.schema.name}, "
        f"quality against {reference.get('holdout_rows', 0)} held-out real rows"
        + (f", target {scenario.data.target}." if scenario.data.target else "."),
        "",
    ]
    if reference:
        lines += [
            "Reference, real training rows against the held-out rows: "
            + ", ".join(f"{k} {v:.4f}" for k, v in reference.items() if isinstance(v, float)) + ".",
            "",
        ]

    lines += ["## Runs", "", "| run | nodes | epsilon per node | converged waits | slowest wait (s) | "
              "mean TVD 3-way | mean AUC | bytes sent per node | rejections |",
              "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        waits = result.summary["waits"]
        ok = sum(1 for w in waits if w["converged"])
        slowest = max((w["seconds"] for w in waits), default=0.0)
        quality = result.summary.get("quality") or {}
        evaluations = result.summary.get("evaluations") or []
        if evaluations:
            tvd, auc = evaluations[-1]["tvd_3way"], evaluations[-1]["auc"]
        else:
            tvd = _mean([q.get("tvd_3way") for q in quality.values()])
            auc = _mean([q.get("auc") for q in quality.values()])
        sent = _final_values(result, "bytes_sent")
        rejections = result.summary.get("rejections") or {}
        rejection_text = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(rejections.items())) or "none"
        lines.append(
            f"| {result.label} | {result.node_count} | {result.epsilon:g} | {ok}/{len(waits)} | {slowest:.1f} | "
            f"{_fmt(tvd)} | {_fmt(auc)} | {_fmt(_mean(list(sent.values())), 0)} | {rejection_text} |"
        )
    lines.append("")

    for result in results:
        lines += _run_section(result)

    lines += [
        "## Plots",
        "",
        "![convergence](convergence.png)",
        "",
        "![quality](quality.png)",
        "",
        "![rejections](rejections.png)",
        "",
        "![traffic](traffic.png)",
        "",
        "Every measurement is a row of `measurements.csv` (run, t_s, event, action, metric, node, value); "
        "`summary.json` has the same summaries as this page.",
        "",
    ]
    return "\n".join(lines)


def _run_section(result: RunResult) -> list[str]:
    summary = result.summary
    lines = [f"## {result.label}", ""]
    split = summary.get("split") or []
    if split:
        sizes = [s["rows"] for s in split]
        lines.append(f"Rows per node: {min(sizes)} to {max(sizes)} (total {sum(sizes)}). "
                     f"Topology: {summary['topology']['kind']}, {summary['topology']['dials']} dials, "
                     f"{summary['topology']['launcher']}.")
        lines.append("")

    lines += ["| # | event | at (s) | took (s) |", "|---|---|---|---|"]
    for event in summary["events"]:
        lines.append(f"| {event['index']} | {event['what']} | {event['at_s']} | {event['took_s']} |")
    lines.append("")

    lines += ["Convergence (every live node holds every release it can reach and a model fitted to exactly "
              "the current ones, with one model id per release set):", ""]
    for wait in summary["waits"]:
        if wait["converged"]:
            state = "converged"
        elif wait.get("outcome") == "model_error":
            state = f"every node holds its releases, but the model fit fails everywhere ({wait['model_error']}); gave up"
        else:
            state = "NOT converged (timeout)"
        held = wait.get("held_s")
        held_text = f"; every node held its releases after {held:.1f} s" if held is not None else ""
        lines.append(f"- after `{wait['after']}`: {state} in {wait['seconds']:.1f} s{held_text}")
    lines.append("")

    for entry in summary.get("misbehaviour", []):
        verdict = f"reject it as {entry['expected']}" if entry["expected"] != "accepted" else "accept it"
        detail = f" ({entry['detail']})" if entry["detail"] else ""
        lines.append(f"- Misbehaving member {entry['node']} ({entry['kind']} x{entry['factor']:g}): "
                     f"the validator's own check predicts peers {verdict}{detail}.")
    if summary.get("misbehaviour"):
        observed = (summary.get("rejections") or {}).get("rejected:implausible", 0)
        lines += ["", f"Peers counted {observed} 'implausible' rejections in all. A peer pulls a rejected "
                  "release again on every anti-entropy round, so this counts deliveries, not releases.", ""]
    for entry in summary.get("outsiders", []):
        holders = entry.get("stored_by_members", [])
        lines.append(f"Outsider {entry['node']} (key in no members file) dialed {', '.join(entry['dials'])}; "
                     f"members that stored its release: {len(holders)}.")
        lines.append("")

    evaluations = summary.get("evaluations") or []
    if len(evaluations) > 1:
        lines += ["Quality at each evaluation (mean over live nodes, misbehaving authors left out):", "",
                  "| # | evaluation | nodes | models | TVD 1-way | TVD 2-way | TVD 3-way | AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for entry in evaluations:
            lines.append(f"| {entry['event']} | {entry['what']} | {entry.get('nodes', '-')} | {entry['models']} | "
                         f"{_fmt(entry['tvd_1way'])} | "
                         f"{_fmt(entry['tvd_2way'])} | {_fmt(entry['tvd_3way'])} | {_fmt(entry['auc'])} |")
        lines.append("")

    restart = summary.get("budget_after_restart") or {}
    if restart:
        lines.append("Budget after restart (rho spent before going down, after coming back): "
                     + "; ".join(f"{n}: {v['before']} -> {v['after']} ({'unchanged' if v['unchanged'] else 'CHANGED'})"
                                 for n, v in restart.items()) + ".")
        lines.append("")

    quality = summary.get("quality") or {}
    budgets = summary.get("budgets") or {}
    behind = summary.get("written_behind") or []
    lines.append("Per node, at the last evaluation and the end of the run"
                 + (f" ({', '.join(behind)}: misbehaving, their daemons did not refit after the simulator wrote "
                    "their release)" if behind else "") + ":")
    lines.append("")
    sent = _final_values(result, "bytes_sent")
    gossip = _final_values(result, "gossip_bytes_sent")
    lines += ["| node | rows | model | TVD 1-way | TVD 2-way | TVD 3-way | AUC | sync bytes sent | gossip bytes sent "
              "| epsilon spent | own releases | releases stored |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for position, (name, budget) in enumerate(budgets.items()):
        q = quality.get(name, {})
        rows = split[position]["rows"] if position < len(split) else ""
        lines.append(
            f"| {name} | {rows} | {q.get('model', '-')} | {_fmt(q.get('tvd_1way'))} | {_fmt(q.get('tvd_2way'))} | "
            f"{_fmt(q.get('tvd_3way'))} | {_fmt(q.get('auc'))} | {sent.get(name, '-')} | {gossip.get(name, '-')} | "
            f"{budget['epsilon_spent']:.3f} | {budget['releases']} | {budget['stored']} |"
        )
    lines.append("")
    return lines


def _final_values(result: RunResult, metric: str) -> dict[str, float]:
    values = {}
    for row in result.rows:
        if row["metric"] == metric and row["event"] == "final":
            values[row["node"]] = row["value"]
    return values


def _mean(values: list) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else None


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


# Plots ------------------------------------------------------------------------


def _plot_convergence(path: Path, results: Sequence[RunResult]) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4))
    for result in results:
        for metric, style, what in (("converged_share", "-", "converged"), ("releases_held_share", "--",
                                                                             "holds every release")):
            points = [(row["t_s"], row["value"]) for row in result.rows if row["metric"] == metric]
            if points:
                times, shares = zip(*points)
                axis.plot(times, shares, linestyle=style, drawstyle="steps-post", linewidth=1.2,
                          label=f"{result.label}: {what}")
    if len(results) == 1:
        for event in results[0].summary["events"]:
            axis.axvline(event["at_s"], color="#999999", linestyle=":", linewidth=0.8)
            axis.text(event["at_s"], 1.03, str(event["index"]), fontsize=7, ha="center", color="#555555")
    axis.set_ylim(-0.02, 1.08)
    axis.set_xlabel("seconds since the run started")
    axis.set_ylabel("share of live nodes")
    axis.set_title("Convergence while waiting (event numbers on top)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_quality(path: Path, scenario: Scenario, results: Sequence[RunResult], reference: dict) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    if scenario.sweep is not None and len(results) > 1:
        xs = list(scenario.sweep.values)[: len(results)]
        for axis, key, title in ((axes[0], "tvd_3way", "mean 3-way TVD (lower is better)"),
                                 (axes[1], "auc", f"AUC for {scenario.data.target} (higher is better)")):
            means = [_mean([q.get(key) for q in (r.summary.get("quality") or {}).values()]) for r in results]
            axis.plot(xs, [m if m is not None else np.nan for m in means], marker="o")
            if key in reference:
                axis.axhline(reference[key], color="#2e7d32", linestyle="--", linewidth=1, label="real rows")
                axis.legend(fontsize=8)
            axis.set_xlabel(scenario.sweep.variable)
            axis.set_title(title, fontsize=10)
    else:
        quality = results[-1].summary.get("quality") or {}
        names = list(quality)
        for axis, key, title in ((axes[0], "tvd_3way", "3-way TVD per node"), (axes[1], "auc", "AUC per node")):
            axis.bar(range(len(names)), [quality[n].get(key, np.nan) for n in names], color="#5b8db8")
            axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            if key in reference:
                axis.axhline(reference[key], color="#2e7d32", linestyle="--", linewidth=1, label="real rows")
                axis.legend(fontsize=8)
            axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_rejections(path: Path, results: Sequence[RunResult]) -> None:
    import matplotlib.pyplot as plt

    reasons = sorted({k for r in results for k in (r.summary.get("rejections") or {})})
    figure, axis = plt.subplots(figsize=(8, 3.5))
    if not reasons:
        axis.text(0.5, 0.5, "no release was rejected", ha="center", va="center")
        axis.axis("off")
    else:
        width = 0.8 / len(results)
        for position, result in enumerate(results):
            counts = [(result.summary.get("rejections") or {}).get(reason, 0) for reason in reasons]
            axis.bar(np.arange(len(reasons)) + position * width, counts, width=width, label=result.label)
        axis.set_xticks(np.arange(len(reasons)) + 0.4 - width / 2, [r.split(":", 1)[1] for r in reasons])
        axis.set_ylabel("rejected deliveries, all nodes")
        axis.legend(fontsize=8)
    axis.set_title("Releases rejected by reason (status.json of every node at the end)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_traffic(path: Path, results: Sequence[RunResult]) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 3.5))
    for result in results:
        sent = _final_values(result, "bytes_sent")
        if sent:
            axis.plot(range(1, len(sent) + 1), [v / 1e6 for v in sent.values()], marker=".", label=result.label)
    axis.set_xlabel("node (in order)")
    axis.set_ylabel("MB sent")
    axis.set_title("Bytes each node sent during the run (network counters)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
