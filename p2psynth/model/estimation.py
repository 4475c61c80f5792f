"""Fit one graphical model to many noisy marginal measurements.

The estimator follows Private-PGM (McKenna, Sheldon and Miklau, "Graphical-model
based estimation and inference for differential privacy", ICML 2019). Among all
distributions, find the marginals ``mu`` that minimize the Gaussian negative log
likelihood of the measurements,

    L(mu) = sum_i || T_i * mu_{C_i} - y_i ||^2 / sigma_i^2,

where measurement ``i`` has noisy counts ``y_i`` over the attribute set ``C_i``,
noise standard deviation ``sigma_i`` per cell, and row total ``T_i``. The
minimizer is represented as a graphical model whose log-potentials live on the
measured cliques. They are fitted by entropic mirror descent. Each step moves
the log-potentials by ``theta_C -= eta * dL/dmu_C``, and message passing on a
junction tree (``inference.Calibrator``) recomputes the model's marginals.
This keeps every iterate a valid distribution (no projection step), and its
fixed points are exactly the minimizers of L over the marginal polytope.

Choices and their reasons:

- Squared loss, weighted by 1 / sigma^2. It is the likelihood of Gaussian noise,
  and under it all measurements of one clique combine exactly into their
  inverse-variance weighted mean with the summed precision: the loss differs by
  a constant only. Combining first makes the cost of an iteration independent
  of the number of authors.
- Row totals. Measurements tagged with the same ``source`` (for example the
  author's public key) count rows of one table. Its size is estimated as the
  inverse-variance weighted mean of those measurements' totals, clipped at 1,
  because a total over ``k`` cells has noise variance ``k * sigma^2``.
  Different sources are different tables drawn from one population, so the
  model describes their union, of ``sum_s T_s`` rows. Without sources all
  measurements count rows of one table.
- Step size: Armijo backtracking on the sufficient-decrease condition of mirror
  descent. The step halves on failure and grows by ``_STEP_GROWTH`` after each
  accepted step. So it tracks the local curvature instead of the global
  Lipschitz bound, which is often 1,000 times too small here. Until the first
  backtrack the step grows by ``_RAMP_GROWTH``, so the first iterations are
  not spent creeping up from that bound.
- Acceleration: Nesterov-style momentum on the log-potentials with adaptive
  restart (O'Donoghue and Candes, "Adaptive restart for accelerated gradient
  schemes", 2015): momentum is dropped whenever the loss goes up. On the Adult
  benchmark (``benchmarks/bench_model.py``) it reached in 400 message-passing
  calls a loss that plain mirror descent had not reached after 1,600.
- Stopping at the noise level (``stop_at_noise_level``): at the true
  distribution each measured cell adds one squared standardized Gaussian to the
  loss, so its expected value is the number of measured cells. Iteration stops
  once the loss falls to that level (Morozov's discrepancy principle for
  iterative regularization). Fitting further fits the noise. On the Adult
  benchmark with max_clique_cells=20,000, the average 3-way total variation
  distance of the model grew from 0.15 at the noise level to 0.19 at the
  optimum of L. With exact measurements the level is
  never reached and the fit runs to convergence.
- Start: the independence model of the measured 1-way marginals (clipped at a
  small floor), which is already close for most cells.
- Size caps. Triangulating the union of many authors' trees can need cliques of
  tens of millions of cells. Over ``max_clique_cells`` or ``max_memory_bytes``
  the fit raises ModelError, or with ``drop_cliques_over_cap`` drops the
  measured cliques of least total precision that do not fit (reported in
  ``FitSummary.dropped_cliques``).
- Determinism: measurements are sorted into a canonical order (attributes, then
  counts bytes, then sigma) before anything is summed, the iteration count and
  stopping rule depend only on computed values, and numpy is used without
  threads. The same measurements in any order give bit-identical models on the
  same numpy build.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError
from p2psynth.model.graphical_model import GraphicalModel
from p2psynth.model.inference import Calibrator, marginalize
from p2psynth.model.junction_tree import JunctionTree, build_junction_tree

logger = logging.getLogger(__name__)

DEFAULT_MAX_CLIQUE_CELLS = 1_000_000
DEFAULT_MAX_MEMORY_BYTES = 512 * 1024 * 1024

_STEP_GROWTH = 1.2
_RAMP_GROWTH = 4.0
_MAX_BACKTRACKS = 30
_ARMIJO_FRACTION = 0.5
_START_FLOOR = 1e-6


@dataclass(frozen=True)
class FitSummary:
    """Statistics of one fit: iterations, message-passing calls, losses, wall time and dropped cliques."""

    iterations: int
    calibrations: int
    loss: float
    initial_loss: float
    seconds: float
    dropped_cliques: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class _Target:
    """The combined measurements of one clique, in probability units.

    ``target`` is the inverse-variance weighted mean of the rescaled noisy
    counts, divided by the model total. ``weight`` multiplies the squared error
    of the clique's marginal and equals the summed precision times the total
    squared.
    """

    attributes: tuple[str, ...]
    target: np.ndarray
    weight: float


def fit_model(
    domain: Domain,
    measurements: Sequence[Measurement],
    *,
    max_clique_cells: int = DEFAULT_MAX_CLIQUE_CELLS,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    sources: Sequence[Hashable] | None = None,
    drop_cliques_over_cap: bool = False,
    stop_at_noise_level: bool = True,
    max_iterations: int = 500,
    tolerance: float = 1e-7,
    provenance: Mapping[str, object] | None = None,
) -> GraphicalModel:
    """Fit a graphical model over ``domain`` that explains ``measurements``.

    ``sources``, if given, has one entry per measurement naming the table it
    counts, such as the author's key. The module header explains how totals
    follow from it. Over the size caps the fit raises ModelError naming the
    cliques, unless ``drop_cliques_over_cap`` lets it drop the least precise
    measured cliques that do not fit. Iteration stops after ``max_iterations``,
    at the noise level (``stop_at_noise_level``, see the module header), or
    once the loss fell by less than ``tolerance`` (relative) in each of the
    last ``_PATIENCE`` iterations. ``provenance`` is stored in the model as
    given. Raises ModelError for invalid measurements.
    """
    started = time.perf_counter()
    if not measurements:
        raise ModelError(
            "no measurements to fit a model to; wait until at least one member's release has arrived"
        )
    if sources is not None and len(sources) != len(measurements):
        raise ModelError(
            f"got {len(sources)} sources for {len(measurements)} measurements; give one source per measurement"
        )
    if max_iterations < 1:
        raise ModelError(f"max_iterations is {max_iterations}; it must be at least 1")

    prepared = [_prepare(domain, m, i) for i, m in enumerate(measurements)]
    labels = list(sources) if sources is not None else [None] * len(measurements)
    total, targets = _combine(domain, prepared, labels)

    if drop_cliques_over_cap:
        targets, dropped = _select_targets(
            domain, targets, max_clique_cells=max_clique_cells, max_memory_bytes=max_memory_bytes
        )
    else:
        dropped = []
    try:
        tree = build_junction_tree(
            domain,
            [t.attributes for t in targets],
            max_clique_cells=max_clique_cells,
            max_memory_bytes=max_memory_bytes,
        )
    except ModelError as exc:
        if drop_cliques_over_cap:
            raise
        raise ModelError(
            f"{exc}, or fit with drop_cliques_over_cap=True to leave out the least precise cliques that do not fit"
        ) from None
    logger.info(
        "fitting %d measurements over %d cliques: junction tree of %d cliques, largest %d cells, total rows %.1f",
        len(measurements),
        len(targets),
        len(tree.cliques),
        max(tree.cells(c) for c in range(len(tree.cliques))),
        total,
    )

    # At the true distribution the expected loss is one per measured cell (each term is a squared
    # standardized Gaussian), so fitting below that level fits noise.
    noise_level = float(sum(t.target.size for t in targets)) if stop_at_noise_level else 0.0
    marginals, summary = _mirror_descent(
        tree, targets, max_iterations=max_iterations, tolerance=tolerance, noise_level=noise_level, started=started
    )
    summary = dataclasses.replace(summary, dropped_cliques=tuple(dropped))
    logger.info(
        "fit finished after %d iterations (%d message-passing calls) in %.2f s, loss %.6g from %.6g",
        summary.iterations,
        summary.calibrations,
        summary.seconds,
        summary.loss,
        summary.initial_loss,
    )
    return GraphicalModel(
        tree=tree, marginals=marginals, total=total, provenance=dict(provenance or {}), fit_summary=summary
    )


# --- measurement preparation -------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """One validated measurement with its counts transposed to domain attribute order."""

    key: tuple
    attributes: tuple[str, ...]
    counts: np.ndarray
    sigma: float
    total: float


def _prepare(domain: Domain, measurement: Measurement, position: int) -> _Prepared:
    """Validate one measurement and return it in domain order with its canonical sort key."""
    attributes = tuple(measurement.attributes)
    where = f"measurement {position} over {attributes}"
    for name in attributes:
        if name not in domain:
            raise ModelError(
                f"{where} names attribute {name!r}, which is not in the domain {list(domain.attributes)}; "
                "every member must use the network's schema"
            )
    if len(set(attributes)) != len(attributes):
        raise ModelError(f"{where} repeats an attribute; each attribute may appear once")

    counts = measurement.counts
    if not isinstance(counts, np.ndarray) or counts.dtype.kind not in "iu":
        kind = getattr(counts, "dtype", type(counts).__name__)
        raise ModelError(f"{where} has counts of type {kind}; counts must be an integer numpy array")
    expected = domain.shape(attributes)
    if counts.shape != expected:
        raise ModelError(
            f"{where} has counts of shape {counts.shape} but the domain gives {expected}; "
            "the release was made with a different schema"
        )
    sigma = float(measurement.sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ModelError(f"{where} has sigma {measurement.sigma!r}; it must be a finite positive number")

    canonical = np.ascontiguousarray(counts, dtype="<i8")
    key = (attributes, canonical.tobytes(), sigma)
    order = sorted(range(len(attributes)), key=lambda i: domain.index(attributes[i]))
    in_domain_order = np.ascontiguousarray(np.transpose(canonical, order)).astype(np.float64)
    return _Prepared(
        key=key,
        attributes=tuple(attributes[i] for i in order),
        counts=in_domain_order,
        sigma=sigma,
        total=float(canonical.sum()),
    )


def _combine(
    domain: Domain, prepared: list[_Prepared], labels: list[Hashable]
) -> tuple[float, list[_Target]]:
    """Estimate the model total and merge the measurements of each clique into one target."""

    # Groups of one source, ordered by their sorted member keys so input order cannot matter.
    groups: dict[Hashable, list[_Prepared]] = {}
    for item, label in zip(prepared, labels):
        groups.setdefault(label, []).append(item)
    ordered = sorted((sorted(g, key=lambda p: p.key) for g in groups.values()), key=lambda g: [p.key for p in g])

    group_totals = [_estimate_rows(group) for group in ordered]
    total = float(sum(group_totals))

    # Rescale every measurement to the model total, then take the precision-weighted mean per clique.
    sums: dict[tuple[str, ...], list] = {}
    for group, rows in zip(ordered, group_totals):
        scale = total / rows
        for item in group:
            if not item.attributes:
                continue
            precision = 1.0 / (item.sigma * scale) ** 2
            entry = sums.setdefault(item.attributes, [0.0, np.zeros(item.counts.shape), []])
            entry[2].append((item.key, precision, item.counts * scale))
    if not sums:
        raise ModelError(
            "every measurement is a 0-way total; at least one measurement over one or more attributes is needed"
        )

    targets = []
    for attributes in sorted(sums, key=lambda a: [domain.index(x) for x in a]):
        parts = sorted(sums[attributes][2], key=lambda p: p[0])
        precision = math.fsum(p[1] for p in parts)
        weighted = np.zeros(parts[0][2].shape)
        for _, part_precision, counts in parts:
            weighted += part_precision * counts
        targets.append(
            _Target(attributes=attributes, target=weighted / precision / total, weight=precision * total * total)
        )
    return total, targets


def _select_targets(
    domain: Domain, targets: list[_Target], *, max_clique_cells: int, max_memory_bytes: int
) -> tuple[list[_Target], list[tuple[str, ...]]]:
    """Return the targets to fit (all, if their junction tree fits the caps) and the dropped cliques.

    Otherwise 1-way targets are always kept, and larger ones are added in order
    of decreasing weight (summed precision). So cliques that more authors, or
    less noisy ones, measured come first. A clique is dropped when adding it
    would push the junction tree over a cap.
    """
    caps = {"max_clique_cells": max_clique_cells, "max_memory_bytes": max_memory_bytes}
    try:
        build_junction_tree(domain, [t.attributes for t in targets], **caps)
        return targets, []
    except ModelError:
        pass

    kept = [t for t in targets if len(t.attributes) <= 1]
    dropped = []
    candidates = sorted(
        (t for t in targets if len(t.attributes) > 1),
        key=lambda t: (-t.weight, [domain.index(a) for a in t.attributes]),
    )
    for target in candidates:
        try:
            build_junction_tree(domain, [t.attributes for t in kept] + [target.attributes], **caps)
        except ModelError:
            dropped.append(target.attributes)
            continue
        kept.append(target)
    logger.warning(
        "dropped %d of %d measured cliques to keep the junction tree within max_clique_cells=%d and "
        "max_memory_bytes=%d: %s",
        len(dropped),
        len(targets),
        max_clique_cells,
        max_memory_bytes,
        ", ".join("x".join(c) for c in dropped),
    )
    order = {id(t): i for i, t in enumerate(targets)}
    return sorted(kept, key=lambda t: order[id(t)]), dropped


def _estimate_rows(group: list[_Prepared]) -> float:
    """Return the inverse-variance weighted mean of the group's totals, at least 1."""
    weights = [1.0 / (math.prod(p.counts.shape) * p.sigma**2) for p in group]
    estimate = math.fsum(w * p.total for w, p in zip(weights, group)) / math.fsum(weights)
    return max(estimate, 1.0)


# --- mirror descent ----------------------------------------------------------------------


_PATIENCE = 5


class _Objective:
    """Loss, gradient and message passing for one junction tree and set of targets."""

    def __init__(self, tree: JunctionTree, targets: list[_Target]) -> None:
        self.tree = tree
        self.targets = targets
        self.calibrator = Calibrator(tree)
        self.calibrations = 0
        # For each target, the junction tree clique that carries its log-potential.
        self.homes = [tree.containing(t.attributes) for t in targets]
        self._expand_shapes = [
            tuple(t.target.shape[t.attributes.index(a)] if a in t.attributes else 1 for a in tree.cliques[home])
            for t, home in zip(targets, self.homes)
        ]
        self._plan = self._marginal_plan()

    def _marginal_plan(self) -> list[tuple[int, int | None]]:
        """Return (target, source) pairs in evaluation order.

        A target is summed from the smallest target of the same home clique that
        contains it (source is that target's index), or else from the clique
        itself (source None), so big cliques are summed over as rarely as possible.
        """
        plan = []
        by_size = sorted(range(len(self.targets)), key=lambda i: (-self.targets[i].target.size, i))
        for position, index in enumerate(by_size):
            attributes = set(self.targets[index].attributes)
            sources = [
                j
                for j in by_size[:position]
                if self.homes[j] == self.homes[index] and attributes < set(self.targets[j].attributes)
            ]
            plan.append((index, min(sources, key=lambda j: self.targets[j].target.size) if sources else None))
        return plan

    def evaluate(self, theta: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Return (measured marginals, loss) at ``theta``; clique marginals stay in the calibrator."""
        self.calibrations += 1
        buffers = self.calibrator.potentials
        for buffer in buffers:
            buffer.fill(0.0)
        for home, shape, values in zip(self.homes, self._expand_shapes, theta):
            buffers[home] += values.reshape(shape)
        marginals = self.calibrator.run()

        measured: list[np.ndarray | None] = [None] * len(self.targets)
        for index, source in self._plan:
            if source is None:
                home = self.homes[index]
                measured[index] = marginalize(marginals[home], self.tree.cliques[home], self.targets[index].attributes)
            else:
                measured[index] = marginalize(
                    measured[source], self.targets[source].attributes, self.targets[index].attributes
                )
        loss = math.fsum(t.weight * float(np.sum((mu - t.target) ** 2)) for t, mu in zip(self.targets, measured))
        return measured, loss  # type: ignore[return-value]

    def gradient(self, measured: list[np.ndarray]) -> list[np.ndarray]:
        return [2.0 * t.weight * (mu - t.target) for t, mu in zip(self.targets, measured)]


def _initial_theta(targets: list[_Target]) -> list[np.ndarray]:
    """Return log-potentials of the independence model of the measured 1-way marginals."""
    theta = []
    for target in targets:
        if len(target.attributes) == 1:
            clipped = np.clip(target.target, 0.0, None) + _START_FLOOR
            theta.append(np.log(clipped / clipped.sum()))
        else:
            theta.append(np.zeros(target.target.shape))
    return theta


def _inner(first: list[np.ndarray], second: list[np.ndarray], third: list[np.ndarray]) -> float:
    """Return sum over targets of <first, second - third>."""
    return math.fsum(float(np.sum(a * (b - c))) for a, b, c in zip(first, second, third))


def _mirror_descent(
    tree: JunctionTree,
    targets: list[_Target],
    *,
    max_iterations: int,
    tolerance: float,
    noise_level: float,
    started: float,
) -> tuple[list[np.ndarray], FitSummary]:
    """Minimize the loss by accelerated mirror descent with Armijo steps; return the clique marginals.

    Iteration stops early once the loss is at most ``noise_level``.
    """
    objective = _Objective(tree, targets)
    theta = _initial_theta(targets)
    measured, loss = objective.evaluate(theta)
    initial_loss = loss

    # ``previous`` is the iterate before ``theta``; ``momentum_steps`` counts accepted steps since
    # the last restart and sets the momentum weight k / (k + 3).
    previous = theta
    momentum_steps = 0
    # The global Lipschitz bound of the gradient in the l1 geometry: a safe first step.
    step = 1.0 / (2.0 * math.fsum(t.weight for t in targets))
    # The step grows fast until the first backtrack finds the scale of the curvature.
    growth = _RAMP_GROWTH
    quiet = 0
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        if momentum_steps:
            weight = momentum_steps / (momentum_steps + 3.0)
            point = [th + weight * (th - pr) for th, pr in zip(theta, previous)]
            point_measured, point_loss = objective.evaluate(point)
        else:
            point, point_measured, point_loss = theta, measured, loss
        gradient = objective.gradient(point_measured)

        # Armijo backtracking from the extrapolated point.
        for _ in range(_MAX_BACKTRACKS):
            trial = [p - step * g for p, g in zip(point, gradient)]
            trial_measured, trial_loss = objective.evaluate(trial)
            if trial_loss <= point_loss - _ARMIJO_FRACTION * _inner(gradient, point_measured, trial_measured):
                break
            step *= 0.5
            growth = _STEP_GROWTH
        else:
            logger.debug("no step decreased the loss at iteration %d; stopping", iteration)
            break

        # Adaptive restart: momentum that made the loss go up is dropped, and the step is retried.
        if trial_loss > loss:
            if momentum_steps == 0:
                break
            momentum_steps = 0
            previous = theta
            continue

        relative = (loss - trial_loss) / max(loss, np.finfo(float).tiny)
        previous, theta, measured, loss = theta, trial, trial_measured, trial_loss
        momentum_steps += 1
        step *= growth
        logger.debug("iteration %d: loss %.9g, step %.3g", iteration, loss, step)
        quiet = quiet + 1 if relative < tolerance else 0
        if quiet >= _PATIENCE or loss <= noise_level:
            break

    objective.evaluate(theta)
    marginals = [m.copy() for m in objective.calibrator.potentials]
    summary = FitSummary(
        iterations=iteration,
        calibrations=objective.calibrations,
        loss=loss,
        initial_loss=initial_loss,
        seconds=time.perf_counter() - started,
    )
    return marginals, summary
