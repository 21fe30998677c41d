"""Hopfield rules against slow reference loops, and the pseudo-inverse fixed-point property."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.hopfield import HebbHopfield, PseudoInverseHopfield, StorkeyHopfield
from membench.budget import TABLE1_BUDGET, hopfield_floats
from membench.tasks import BinaryTask


def reference_hebb(spins: np.ndarray) -> np.ndarray:
    num_patterns, dim = spins.shape
    weights = np.zeros((dim, dim))
    for i in range(dim):
        for j in range(dim):
            if i != j:
                weights[i, j] = sum(spins[m, i] * spins[m, j] for m in range(num_patterns)) / dim
    return weights


def reference_storkey(spins: np.ndarray) -> np.ndarray:
    num_patterns, dim = spins.shape
    weights = np.zeros((dim, dim))
    for m in range(num_patterns):
        xi = spins[m]
        field = [sum(weights[i, k] * xi[k] for k in range(dim)) for i in range(dim)]
        new = weights.copy()
        for i in range(dim):
            for j in range(dim):
                new[i, j] = 0.0 if i == j else weights[i, j] + (xi[i] * xi[j] - xi[i] * field[j] - field[i] * xi[j]) / dim
        weights = new
    return weights


def reference_pseudoinverse(spins: np.ndarray) -> np.ndarray:
    columns = spins.T.astype(np.float64)
    projector = columns @ np.linalg.inv(columns.T @ columns) @ columns.T
    np.fill_diagonal(projector, 0.0)
    return projector


def reference_read(weights: np.ndarray, query: np.ndarray, orders: list[np.ndarray]) -> np.ndarray:
    """Asynchronous updates of erased units (0.5) in the given order, one sweep per order."""
    spins = 2.0 * query - 1.0
    free = query == 0.5
    for order in orders:
        changed = False
        for unit in order:
            if not free[unit]:
                continue
            field = float(weights[unit] @ spins)
            if field != 0 and np.sign(field) != spins[unit]:
                spins[unit] = np.sign(field)
                changed = True
        if not changed:
            break
    return (spins + 1.0) / 2.0


@pytest.mark.parametrize("cls, reference", [(HebbHopfield, reference_hebb), (StorkeyHopfield, reference_storkey),
                                            (PseudoInverseHopfield, reference_pseudoinverse)])
def test_rule_matches_slow_reference(cls, reference):
    task = BinaryTask(num_patterns=5, dim=12, erased=5)
    episodes = task.sample(2, torch.Generator().manual_seed(3))
    model = cls(task.spec)
    packed, thresholds = model.write(episodes.patterns)
    weights = model.unpack(packed, 12)
    for b in range(2):
        expected = reference((2 * episodes.patterns[b] - 1).numpy())
        np.testing.assert_allclose(weights[b].numpy(), expected, atol=1e-5)
    assert torch.all(thresholds == 0)

    torch.manual_seed(11)
    retrieved = model.read((packed, thresholds), episodes.queries.clone())
    torch.manual_seed(11)  # redraw the same per-sweep orders the model drew (free units first)
    clamped_last = (episodes.queries != 0.5).float() * 2.0
    orders = [(torch.rand(2, 5, 12) + clamped_last).argsort(-1) for _ in range(model.max_sweeps)]
    for b in range(2):
        for q in range(5):
            expected = reference_read(weights[b].double().numpy(), episodes.queries[b, q].numpy(),
                                      [o[b, q].numpy() for o in orders])
            np.testing.assert_array_equal(retrieved[b, q].numpy(), expected)


def test_pseudoinverse_stores_patterns_as_fixed_points():
    task = BinaryTask(num_patterns=40, dim=64, erased=0)
    episodes = task.sample(3, torch.Generator().manual_seed(0))
    model = PseudoInverseHopfield(task.spec)
    weights = model.unpack(model.write(episodes.patterns)[0], 64)
    spins = 2 * episodes.patterns - 1                             # (B, N, D)
    fields = spins @ weights.transpose(1, 2)                      # field of every unit at every pattern
    assert torch.all(torch.sign(fields) == spins), "every stored pattern must be a fixed point"
    # and retrieval of a lightly erased stored pattern is exact
    light = BinaryTask(num_patterns=8, dim=64, erased=8).sample(3, torch.Generator().manual_seed(1))
    light_weights = model.write(light.patterns)
    assert torch.equal(model.read(light_weights, light.queries), light.patterns)


def test_state_is_the_packed_free_weights_and_thresholds():
    """write keeps exactly n(n-1)/2 + n values; unpacked, they are each rule's symmetric zero-diagonal weights."""
    patterns = BinaryTask(num_patterns=10, dim=32, erased=16).sample(2, torch.Generator().manual_seed(0)).patterns
    for cls in (HebbHopfield, StorkeyHopfield, PseudoInverseHopfield):
        model = cls(BinaryTask(10, 32, 16).spec)
        packed, thresholds = model.write(patterns)
        assert packed.shape == (2, 32 * 31 // 2) and thresholds.shape == (2, 32), cls.__name__
        weights = model.unpack(packed, 32)
        assert torch.equal(weights, weights.transpose(1, 2)), cls.__name__
        assert torch.all(torch.diagonal(weights, dim1=1, dim2=2) == 0), cls.__name__
        full = model.weights(2 * patterns - 1)
        rows, cols = torch.triu_indices(32, 32, offset=1)
        assert torch.equal(weights[:, rows, cols], full[:, rows, cols]), cls.__name__


def test_memory_count_is_table1_budget():
    spec = BinaryTask(num_patterns=96).spec
    assert hopfield_floats(128) == TABLE1_BUDGET == 8256
    assert HebbHopfield(spec).memory_floats(spec) == 8256


def test_known_bits_stay_clamped():
    task = BinaryTask(num_patterns=60, dim=64, erased=32)  # overloaded: retrieval makes errors
    episodes = task.sample(2, torch.Generator().manual_seed(2))
    model = HebbHopfield(task.spec)
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    known = episodes.queries != 0.5
    assert torch.equal(retrieved[known], episodes.queries[known])


def test_flipped_queries_move_every_unit():
    """Under bit flips nothing is clamped: at N = 8 Hebbian recall corrects the 13 flipped bits of 128."""
    task = BinaryTask(num_patterns=8, erased=0, flip=0.1)
    assert not task.spec.clamp_known
    episodes = task.sample(4, torch.Generator().manual_seed(0))
    model = HebbHopfield(task.spec)
    torch.manual_seed(0)
    errors = task.errors(model.read(model.write(episodes.patterns), episodes.queries), episodes.patterns)
    assert task.errors(episodes.queries, episodes.patterns).eq(13).all() and errors.mean() < 0.5


@pytest.mark.parametrize("cls", [HebbHopfield, StorkeyHopfield])
def test_few_patterns_are_fixed_points_of_hebb_and_storkey(cls):
    """Well below capacity (N = 8 of 128 units: Hebb's is about 0.14 n = 18) every stored pattern is a fixed
    point, and reading it back from a query with 32 bits erased is exact."""
    task = BinaryTask(num_patterns=8, dim=128, erased=32)
    episodes = task.sample(4, torch.Generator().manual_seed(0))
    model = cls(task.spec)
    packed, thresholds = model.write(episodes.patterns)
    spins = 2 * episodes.patterns - 1
    fields = spins @ model.unpack(packed, 128).transpose(1, 2) - thresholds.unsqueeze(1)
    assert torch.all(torch.sign(fields) == spins), "every stored pattern must be a fixed point"
    assert torch.equal(model.read(model.write(episodes.patterns), episodes.queries), episodes.patterns)


def test_the_hopfield_rows_reproduce_the_papers_table1(tmp_path):
    """The three Hopfield rows of Table 1 (erasure protocol: known bits clamped, asynchronous updates until
    stable) within 1.75 bits of the paper at every N, on 320 queries per cell (the largest gap, the
    pseudo-inverse rule at N = 64, is -1.5 here and -1.43 in the committed 3000-query row; a protocol change,
    e.g. flips or synchronous updates, moves some cell by several bits)."""
    import pandas as pd

    from membench.runner import run_all
    from membench.suites import get_suite

    paper = pd.read_csv(Path(__file__).parents[1] / "results" / "reference" / "paper_table1.csv", comment="#")
    paper = paper.set_index("method")
    models = ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse")
    specs = get_suite("table1").expand("table1", models, (0,), 320, "quick", (16, 32, 48, 64, 96))
    gaps = {}
    for record in run_all(specs, tmp_path, device="cpu", progress=False):
        n = record["task"]["num_patterns"]
        gaps[(record["model"], n)] = round(float(np.mean(record["errors"])) - paper.loc[record["model"], str(n)], 2)
    assert len(gaps) == 15 and all(abs(gap) <= 1.75 for gap in gaps.values()), gaps
