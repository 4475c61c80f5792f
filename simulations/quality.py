"""Quality of each live node's model, measured as an analyst would: through the node's API.

For every distinct model id among the chosen nodes, synthetic rows are
sampled with a fixed seed from one node holding that model (``POST
/v1/sample`` as CSV), encoded back under the schema, and compared with the
held-out real rows by ``p2psynth.evaluate``: mean total variation distance
of all 1-, 2- and 3-way marginals, and the AUC of a classifier for the target
trained on the synthetic rows and tested on the real ones. Nodes with the same
model id share the result, because assembly makes the model a deterministic
function of its releases, and the sampler a deterministic function of the
model and the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from p2psynth.encoding import encode_file
from p2psynth.evaluate import marginal_tvd, ml_efficacy
from p2psynth.localnet import LocalNode
from p2psynth.schema import Schema

log = logging.getLogger(__name__)


def evaluate_codes(synthetic: np.ndarray, holdout: np.ndarray, schema: Schema, *, target: str | None,
                   seed: int) -> dict[str, float]:
    """Return TVD means (1- to 3-way) and, with a target, AUC and accuracy of ``synthetic`` against ``holdout``."""
    domain = schema.domain
    ways = tuple(w for w in (1, 2, 3) if w <= len(domain))
    distances = marginal_tvd(holdout, synthetic, domain, ways=ways)
    result = {f"tvd_{w}way": round(distances[f"{w}-way"]["mean"], 5) for w in ways}
    if target:
        # One OpenMP thread: on a 2-core machine shared with node processes,
        # scikit-learn's default thread pool made this fit about 25 times slower.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            efficacy = ml_efficacy(synthetic, holdout, domain, target=target, seed=seed)
        result["auc"] = round(float(efficacy["auc"]), 5)
        result["accuracy"] = round(float(efficacy["accuracy"]), 5)
    return result


def evaluate_nodes(
    nodes: Sequence[LocalNode],
    *,
    launcher,
    schema: Schema,
    holdout: np.ndarray,
    target: str | None,
    rows: int,
    seed: int,
    scratch: Path,
) -> dict[str, dict]:
    """Return per node name its quality measures plus the model id they belong to."""
    by_model: dict[str, list[LocalNode]] = {}
    without: list[str] = []
    for node in nodes:
        model_id = ((node.status() or {}).get("model") or {}).get("model_id")
        if model_id:
            by_model.setdefault(model_id, []).append(node)
        else:
            without.append(node.name)
    if without:
        log.warning("%d node(s) have no model, so their quality is not measured: %s", len(without),
                    ", ".join(without))

    scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for model_id, holders in by_model.items():
        path = scratch / f"{model_id[:16]}.csv"
        with launcher.client(holders[0]) as client:
            path.write_bytes(client.sample_bytes(rows=rows, seed=seed, format="csv"))
        codes = encode_file(path, schema, header=True).codes
        measured = evaluate_codes(codes, holdout, schema, target=target, seed=seed)
        for node in holders:
            results[node.name] = {**measured, "model": model_id[:16]}
    return results


def mean_of(results: dict[str, dict], key: str) -> float | None:
    """Return the mean of one measure over the nodes that have it, or None."""
    values = [r[key] for r in results.values() if key in r]
    return round(float(np.mean(values)), 5) if values else None


def describe(results: dict[str, dict]) -> str:
    """Return a one-line summary: how many models, mean TVD and AUC over nodes."""
    if not results:
        return "no node had a model"
    models = {r["model"] for r in results.values()}
    parts = [f"{len(models)} model(s) over {len(results)} nodes"]
    for key in ("tvd_1way", "tvd_2way", "tvd_3way", "auc"):
        values = [r[key] for r in results.values() if key in r]
        if values:
            parts.append(f"{key} {np.mean(values):.4f}")
    return ", ".join(parts)
