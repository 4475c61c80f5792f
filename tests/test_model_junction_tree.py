"""Tests of junction-tree construction: validity, determinism and the size caps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from p2psynth.domain import Domain
from p2psynth.errors import ModelError
from p2psynth.model import JunctionTree, build_junction_tree
from p2psynth.model.inference import calibrate

UNLIMITED = {"max_clique_cells": 10**9, "max_memory_bytes": 10**12}


def random_cliques(domain: Domain, count: int, seed: int) -> list[tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    pairs = list(itertools.combinations(domain.attributes, 2))
    return [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]


def test_tree_covers_every_measured_clique():
    domain = Domain(tuple("abcdefgh"), (2, 3, 4, 5, 2, 3, 4, 5))
    for seed in range(5):
        measured = random_cliques(domain, 10, seed)
        tree = build_junction_tree(domain, measured, **UNLIMITED)
        for clique in measured:
            assert tree.containing(clique) is not None, clique
        # The running intersection property is checked when the tree is constructed.
        assert set(a for c in tree.cliques for a in c) == set(domain.attributes)


def test_tree_is_deterministic_and_order_free():
    domain = Domain(tuple("abcdefgh"), (2, 3, 4, 5, 2, 3, 4, 5))
    measured = random_cliques(domain, 12, seed=9)
    first = build_junction_tree(domain, measured, **UNLIMITED)
    second = build_junction_tree(domain, list(reversed(measured)), **UNLIMITED)
    assert first == second


def test_tree_of_disconnected_attributes_is_one_tree():
    domain = Domain(("a", "b", "c", "d"), (2, 2, 2, 2))
    tree = build_junction_tree(domain, [("a", "b")], **UNLIMITED)
    assert sorted(tree.cliques) == [("a", "b"), ("c",), ("d",)]
    assert sum(1 for p in tree.parents if p < 0) == 1


def test_cap_error_names_cliques_and_advice():
    domain = Domain(("age", "income", "zip", "job"), (80, 50, 90, 20))
    cycle = [("age", "income"), ("income", "zip"), ("zip", "job"), ("age", "job")]
    with pytest.raises(ModelError) as raised:
        build_junction_tree(domain, cycle, max_clique_cells=50_000, max_memory_bytes=10**12)
    message = str(raised.value)
    assert "max_clique_cells=50,000" in message
    assert "cells" in message
    assert "zip" in message
    assert "coarsen" in message


def test_memory_cap_error_lists_largest_cliques():
    domain = Domain(("a", "b"), (1000, 1000))
    with pytest.raises(ModelError, match=r"max_memory_bytes=1,000,000.*a x b = 1,000,000 cells"):
        build_junction_tree(domain, [("a", "b")], max_clique_cells=10**9, max_memory_bytes=1_000_000)


def test_tree_rejects_unknown_attribute():
    domain = Domain(("a", "b"), (2, 2))
    with pytest.raises(ModelError, match="'c'"):
        build_junction_tree(domain, [("a", "c")], **UNLIMITED)


def test_tree_rejects_broken_running_intersection():
    domain = Domain(("a", "b", "c"), (2, 2, 2))
    with pytest.raises(ModelError, match="running intersection"):
        JunctionTree(domain=domain, cliques=(("a", "b"), ("c",), ("a", "c")), parents=(-1, 0, 1), order=(0, 1, 2))


def test_calibration_matches_brute_force():
    domain = Domain(("a", "b", "c", "d"), (2, 3, 4, 2))
    tree = build_junction_tree(domain, [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")], **UNLIMITED)
    rng = np.random.default_rng(3)
    potentials = [rng.normal(scale=3.0, size=tree.shape(c)) for c in range(len(tree.cliques))]
    potentials[0].flat[0] = -np.inf

    # Brute force: the joint table of all potentials, then each clique's marginal.
    log_joint = np.zeros(domain.sizes)
    for clique, values in zip(tree.cliques, potentials):
        shape = [domain.sizes[i] if a in clique else 1 for i, a in enumerate(domain.attributes)]
        log_joint = log_joint + values.reshape(shape)
    joint = np.exp(log_joint - log_joint.max())
    joint /= joint.sum()

    for clique, marginal in zip(tree.cliques, calibrate(tree, potentials)):
        summed = tuple(i for i, a in enumerate(domain.attributes) if a not in clique)
        assert np.allclose(marginal, joint.sum(axis=summed), atol=1e-12), clique
