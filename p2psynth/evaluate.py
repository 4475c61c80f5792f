"""Quality of synthetic rows against real rows: marginal distances, ML efficacy, report.

Both measures are the ones the marginal-based DP synthesis literature reports
(MST, McKenna, Miklau and Sheldon 2021; AIM, McKenna et al. 2022), so numbers
here can be put next to published ones:

* **Marginal total variation distance (TVD).** For a set of attributes, the
  TVD between the real and the synthetic marginal is half the L1 distance
  between the two normalized histograms: 0 for equal distributions, 1 for
  disjoint supports. ``marginal_tvd`` reports the mean and the maximum over
  every 1-, 2- and 3-way attribute set. Each histogram is one ``np.bincount``
  over raveled codes. When a marginal has more cells than the two tables have
  rows, the codes are first compacted with ``np.unique``, so the cost follows
  the row count and not the domain size. Without that step a 100 x 100 x 99
  triple would allocate a million cells twice.
* **ML efficacy ("train on synthetic, test on real").** A gradient boosted
  classifier (scikit-learn's ``HistGradientBoostingClassifier`` with every
  attribute declared categorical) is fitted on synthetic rows and scored on
  held-out real rows: ROC AUC (one-vs-rest macro average for more than two
  classes) and accuracy. A synthesizer that lost the dependence between the
  target and the other columns scores about 0.5 AUC.

Everything works on integer codes under a ``Domain`` (rows x attributes, in
domain order), the form the estimator samples. ``write_report`` turns both
measures into a Markdown summary with PNG plots drawn by matplotlib's Agg
backend, so it runs on a headless node.

Rejected alternatives: distances on decoded values (they depend on the
decoding seed of numeric bins and measure nothing the model controls) and a
random subset of triples (the full set of 364 triples of 14 attributes takes
well under a second here, so sampling would only add variance).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from p2psynth.domain import Domain
from p2psynth.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# scikit-learn's histogram gradient boosting accepts a categorical feature only
# when its codes fit in its bins (at most 255 categories). Wider attributes are
# passed as ordinal numbers instead.
_MAX_CATEGORICAL_CODES = 255


def check_codes(codes: np.ndarray, domain: Domain, *, name: str) -> np.ndarray:
    """Validate a code table against ``domain`` and return it as int64.

    Raises ``DataError`` naming the table, the attribute and the bad value when
    the shape or a code does not fit the domain.
    """
    array = np.asarray(codes)
    if array.ndim != 2 or array.shape[1] != len(domain):
        raise DataError(
            f"{name} codes have shape {array.shape}; expected (rows, {len(domain)}) "
            f"for the attributes {', '.join(domain.attributes)}"
        )
    if array.shape[0] == 0:
        raise DataError(f"{name} codes have no rows; quality needs at least one row")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{name} codes have dtype {array.dtype}; expected integer codes")

    array = array.astype(np.int64, copy=False)
    for column, (attribute, size) in enumerate(zip(domain.attributes, domain.sizes)):
        low = int(array[:, column].min())
        high = int(array[:, column].max())
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise DataError(
                f"{name} codes contain {bad} in attribute {attribute!r}, outside its domain 0..{size - 1}; "
                "encode the table with the network's schema first"
            )
    return array


def _attribute_sets(domain: Domain, way: int) -> list[tuple[str, ...]]:
    return list(itertools.combinations(domain.attributes, way))


def _raveled_index(codes: np.ndarray, columns: Sequence[int], sizes: Sequence[int]) -> np.ndarray:
    """Return one int64 cell index per row for the marginal over ``columns`` (C order)."""
    index = codes[:, columns[0]].copy()
    for column, size in zip(columns[1:], sizes[1:]):
        index *= size
        index += codes[:, column]
    return index


def _tvd_of_indices(real_index: np.ndarray, synth_index: np.ndarray, cells: int) -> float:
    """Return the TVD between two empirical distributions given as cell indices."""
    real_rows = real_index.size
    synth_rows = synth_index.size

    # Dense histograms while the marginal is small next to the row count; compact
    # the cells that occur otherwise (cells absent from both tables add nothing).
    if cells > 2 * (real_rows + synth_rows):
        present, inverse = np.unique(np.concatenate([real_index, synth_index]), return_inverse=True)
        cells = present.size
        real_index = inverse[:real_rows]
        synth_index = inverse[real_rows:]

    real_hist = np.bincount(real_index, minlength=cells) / real_rows
    synth_hist = np.bincount(synth_index, minlength=cells) / synth_rows
    return 0.5 * float(np.abs(real_hist - synth_hist).sum())


def marginal_tvd(
    real_codes: np.ndarray,
    synth_codes: np.ndarray,
    domain: Domain,
    *,
    ways: Iterable[int] = (1, 2, 3),
) -> dict[str, Any]:
    """Compute the TVD of every k-way marginal for each k in ``ways``.

    Returns ``{"1-way": {"mean", "max", "count", "worst"}, ..., "per_marginal":
    {attribute tuple: tvd}}``; ``worst`` is the attribute tuple with the
    largest distance. The two tables may have different row counts.
    """
    real = check_codes(real_codes, domain, name="real")
    synth = check_codes(synth_codes, domain, name="synthetic")
    ways = sorted(set(int(way) for way in ways))
    for way in ways:
        if not 1 <= way <= len(domain):
            raise ConfigError(f"marginal order {way} is invalid; use 1 to {len(domain)} for this domain")

    result: dict[str, Any] = {}
    per_marginal: dict[tuple[str, ...], float] = {}
    for way in ways:
        distances = []
        for attributes in _attribute_sets(domain, way):
            columns = [domain.index(a) for a in attributes]
            sizes = domain.shape(attributes)
            cells = math.prod(sizes)
            distance = _tvd_of_indices(
                _raveled_index(real, columns, sizes), _raveled_index(synth, columns, sizes), cells
            )
            per_marginal[attributes] = distance
            distances.append((distance, attributes))

        values = np.array([d for d, _ in distances])
        worst_distance, worst_attributes = max(distances, key=lambda item: item[0])
        result[f"{way}-way"] = {
            "mean": float(values.mean()),
            "max": float(worst_distance),
            "count": len(distances),
            "worst": worst_attributes,
        }
    result["per_marginal"] = per_marginal
    return result


def _roc_auc_one_vs_rest(labels: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> float:
    """Return the macro average of one-vs-rest ROC AUC over classes present in ``labels``.

    ``scores[:, i]`` is the score of ``classes[i]``. A class that never occurs in
    the labels (or is the only one) has no AUC and is left out of the average.
    """
    from sklearn.metrics import roc_auc_score

    aucs = []
    for position, label in enumerate(classes):
        positive = labels == label
        if positive.all() or not positive.any():
            continue
        aucs.append(roc_auc_score(positive, scores[:, position]))
    return float(np.mean(aucs)) if aucs else float("nan")


def _can_stop_early(labels: np.ndarray, *, validation_fraction: float = 0.1) -> bool:
    """Tell whether scikit-learn's stratified validation split for early stopping can be drawn.

    scikit-learn's default (``early_stopping="auto"``) stops early only above
    10,000 training rows. A 10,000-row synthetic Adult table with three income
    classes then ran all 200 rounds of three trees each, where early stopping
    ends after about 25 rounds (ten times faster). The split needs at least 2
    rows of each class and a validation set with at least one row per class.
    """
    counts = np.bincount(labels)
    present = counts[counts > 0]
    return bool(present.min() >= 2 and labels.size * validation_fraction >= present.size)


def ml_efficacy(
    train_codes: np.ndarray,
    test_codes: np.ndarray,
    domain: Domain,
    *,
    target: str,
    seed: int,
    max_iter: int = 200,
) -> dict[str, Any]:
    """Train a classifier for ``target`` on ``train_codes``, score it on ``test_codes``.

    Returns ``{"target", "auc", "accuracy", "classes", "train_rows", "test_rows",
    "majority_accuracy"}``. The AUC is binary for a two-class target and the
    one-vs-rest macro average otherwise. Training rows that hold a single class
    give a constant predictor (AUC 0.5) instead of an error, since that is what
    a synthesizer that lost the target would earn.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    train = check_codes(train_codes, domain, name="training")
    test = check_codes(test_codes, domain, name="test")
    target_column = domain.index(target)
    target_size = domain.size(target)
    if target_size < 2:
        raise ConfigError(f"target {target!r} has {target_size} code; a classifier needs at least 2")

    feature_columns = [i for i in range(len(domain)) if i != target_column]
    categorical = [domain.sizes[i] <= _MAX_CATEGORICAL_CODES for i in feature_columns]
    train_x, train_y = train[:, feature_columns], train[:, target_column]
    test_x, test_y = test[:, feature_columns], test[:, target_column]
    classes = np.arange(target_size)

    # Score every class of the domain, so a class missing from the training rows
    # gets probability 0 instead of shifting the columns.
    scores = np.zeros((test.shape[0], target_size))
    seen = np.unique(train_y)
    if seen.size == 1:
        logger.warning("training rows contain only class %d of %r; scoring a constant predictor", seen[0], target)
        scores[:, seen[0]] = 1.0
    else:
        model = HistGradientBoostingClassifier(
            categorical_features=np.array(categorical),
            max_iter=max_iter,
            random_state=seed,
            early_stopping=_can_stop_early(train_y),
        )
        model.fit(train_x, train_y)
        scores[:, model.classes_] = model.predict_proba(test_x)

    if target_size == 2:
        auc = _roc_auc_one_vs_rest(test_y, scores[:, 1:2], classes[1:2])
    else:
        auc = _roc_auc_one_vs_rest(test_y, scores, classes)
    predictions = classes[np.argmax(scores, axis=1)]
    majority = np.bincount(test_y, minlength=target_size).max() / test_y.size
    return {
        "target": target,
        "auc": auc,
        "accuracy": float(np.mean(predictions == test_y)),
        "majority_accuracy": float(majority),
        "classes": int(target_size),
        "train_rows": int(train.shape[0]),
        "test_rows": int(test.shape[0]),
    }


def _plot_marginals(path: Path, real: np.ndarray, synth: np.ndarray, domain: Domain) -> None:
    """Draw one panel per attribute: real histogram as bars, synthetic as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(domain))
    rows = math.ceil(len(domain) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for position, (attribute, size) in enumerate(zip(domain.attributes, domain.sizes)):
        axis = axes[position // columns][position % columns]
        codes = np.arange(size)
        real_share = np.bincount(real[:, position], minlength=size) / real.shape[0]
        synth_share = np.bincount(synth[:, position], minlength=size) / synth.shape[0]
        axis.bar(codes, real_share, width=1.0, color="#9bb7d4", label="real")
        axis.step(codes, synth_share, where="mid", color="#c0392b", linewidth=1.2, label="synthetic")
        axis.set_title(attribute, fontsize=10)
        axis.tick_params(labelsize=7)
    for position in range(len(domain), rows * columns):
        axes[position // columns][position % columns].axis("off")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("1-way marginals: share of rows per code")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_pair_tvd(path: Path, per_marginal: Mapping[tuple[str, ...], float], domain: Domain) -> None:
    """Draw the symmetric matrix of 2-way TVDs as an annotated heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(domain)
    matrix = np.full((count, count), np.nan)
    for attributes, distance in per_marginal.items():
        if len(attributes) == 2:
            i, j = domain.index(attributes[0]), domain.index(attributes[1])
            matrix[i, j] = matrix[j, i] = distance

    figure, axis = plt.subplots(figsize=(1.0 + 0.55 * count, 0.8 + 0.5 * count))
    image = axis.imshow(matrix, cmap="Reds", vmin=0.0, vmax=max(0.05, float(np.nanmax(matrix))))
    axis.set_xticks(range(count), domain.attributes, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(count), domain.attributes, fontsize=8)
    for i in range(count):
        for j in range(count):
            if not np.isnan(matrix[i, j]):
                axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=axis, shrink=0.8, label="2-way TVD")
    axis.set_title("TVD of each pair of attributes (real vs synthetic)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(
    out_dir: str | Path,
    real: np.ndarray,
    synthetic: np.ndarray,
    domain: Domain,
    *,
    target: str | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
    worst_pairs: int = 10,
) -> Path:
    """Write ``report.md``, ``metrics.json``, ``marginals.png`` and ``pair_tvd.png`` to ``out_dir``.

    ``real`` doubles as the test set of the ML efficacy check, so pass real
    rows the synthesizer never saw when there are any. ``extra`` adds rows (for
    example epsilon, fit time) to the summary table. Returns the path of
    ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = check_codes(real, domain, name="real")
    synthetic = check_codes(synthetic, domain, name="synthetic")
    ways = tuple(way for way in (1, 2, 3) if way <= len(domain))
    distances = marginal_tvd(real, synthetic, domain, ways=ways)
    efficacy = ml_efficacy(synthetic, real, domain, target=target, seed=seed) if target else None

    _plot_marginals(out / "marginals.png", real, synthetic, domain)
    if len(domain) >= 2:
        _plot_pair_tvd(out / "pair_tvd.png", distances["per_marginal"], domain)

    # Summary table, then the worst pairs.
    lines = [
        "# Synthetic data quality",
        "",
        f"Real rows: {real.shape[0]}; synthetic rows: {synthetic.shape[0]}; attributes: {len(domain)}.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for way in ways:
        summary = distances[f"{way}-way"]
        lines.append(f"| {way}-way TVD, mean over {summary['count']} | {summary['mean']:.4f} |")
        lines.append(f"| {way}-way TVD, max ({', '.join(summary['worst'])}) | {summary['max']:.4f} |")
    if efficacy is not None:
        lines.append(f"| AUC for {target} (train synthetic, test real) | {efficacy['auc']:.4f} |")
        lines.append(f"| accuracy for {target} | {efficacy['accuracy']:.4f} |")
        lines.append(f"| majority-class accuracy for {target} | {efficacy['majority_accuracy']:.4f} |")
    for key, value in (extra or {}).items():
        lines.append(f"| {key} | {_format_value(value)} |")

    pairs = sorted(
        ((d, a) for a, d in distances["per_marginal"].items() if len(a) == 2), key=lambda item: -item[0]
    )[:worst_pairs]
    if pairs:
        lines += ["", f"## Worst {len(pairs)} pairs", "", "| pair | TVD |", "|---|---|"]
        lines += [f"| {a} x {b} | {d:.4f} |" for d, (a, b) in pairs]
    lines += ["", "![1-way marginals](marginals.png)", ""]
    if len(domain) >= 2:
        lines += ["![2-way TVD](pair_tvd.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")

    metrics = {
        "tvd": {key: value for key, value in distances.items() if key != "per_marginal"},
        "ml_efficacy": efficacy,
        "extra": dict(extra or {}),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    logger.info("wrote quality report to %s", report)
    return report
