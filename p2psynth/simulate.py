"""Entry point of ``p2psynth simulate SCENARIO``: run a scenario and write its report.

The scenario runner lives in the ``simulations`` package next to this one
(scenario format, splits, node processes, measurements, report); this module
resolves a scenario name, loads the data once, runs each sweep value as a
fresh network and writes the report folder. The shipped scenarios are in
``simulations/scenarios``; ``p2psynth simulate baseline-10`` finds one by name.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def shipped_scenarios() -> dict[str, Path]:
    """Return the scenarios shipped with p2psynth, by name."""
    from simulations.scenario import REPO_ROOT

    folder = REPO_ROOT / "simulations" / "scenarios"
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}


def resolve_scenario(name_or_path: str | Path) -> Path:
    """Return the scenario file for a path or a shipped scenario name."""
    from simulations.scenario import ScenarioError

    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_scenarios()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ScenarioError(
        f"scenario {str(name_or_path)!r} is neither a file nor a shipped scenario; "
        f"shipped: {', '.join(shipped) or 'none'}"
    )


def run_scenario(
    path: str | Path,
    *,
    out_dir: str | Path,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run every sweep value of a scenario with real node processes and return the report folder.

    The report folder is ``out_dir/<scenario name>-seed<seed>-<UTC time>``. It
    contains summary.md, measurements.csv, summary.json, the plots and, under
    ``work/``, the node folders with their logs. ``seed`` overrides the
    scenario's seed. ``progress`` receives one line per step (default: stderr).
    Raises ScenarioError (a ConfigError) for an invalid scenario.
    """
    import numpy as np

    from p2psynth.schema import load_schema
    from simulations.quality import evaluate_codes
    from simulations.report import write_report
    from simulations.runner import ScenarioRun
    from simulations.scenario import load_scenario
    from simulations.splits import load_table

    say = progress or _print_progress
    scenario_path = resolve_scenario(path)
    scenario = load_scenario(scenario_path, seed=seed)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = Path(out_dir) / f"{scenario.name}-seed{scenario.seed}-{stamp}"
    folder.mkdir(parents=True, exist_ok=False)
    started = time.monotonic()

    # The data is read and encoded once; every run splits the same rows.
    schema = load_schema(scenario.data.schema)
    rng = np.random.default_rng(scenario.seed)
    table = load_table(scenario.data.train, schema, skip_rows=scenario.data.train_skip_rows,
                       scratch=folder / "work" / "train.csv", max_rows=scenario.data.train_rows, rng=rng)
    holdout = None
    reference: dict = {}
    if scenario.data.holdout is not None:
        holdout = load_table(scenario.data.holdout, schema, skip_rows=scenario.data.holdout_skip_rows,
                             scratch=folder / "work" / "holdout.csv", max_rows=scenario.data.holdout_rows,
                             rng=rng).codes
        reference = evaluate_codes(table.codes, holdout, schema, target=scenario.data.target, seed=scenario.seed)
        reference["holdout_rows"] = int(len(holdout))
    say(f"scenario {scenario.name}: {len(table.lines)} training rows, "
        f"{0 if holdout is None else len(holdout)} held-out rows, report in {folder}")

    results = []
    for label, variant in scenario.variants():
        run = ScenarioRun(variant, label=label, root=folder / "work" / label.replace("=", "-"), schema=schema,
                          table=table, holdout=holdout, progress=say)
        results.append(run.run())

    command = f"p2psynth simulate {scenario_path} --seed {scenario.seed}"
    summary = write_report(folder, scenario, results, reference=reference, command=command,
                           wall_s=time.monotonic() - started)
    say(f"report written to {summary}")
    return folder


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
