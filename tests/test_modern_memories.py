"""Modern Hopfield, dense associative memory, universal Hopfield and SDM: rules against slow
reference loops (one query at a time, plain Python), retrieval and capacity, budgets, options."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.dense_am import DenseAssociativeMemory
from baselines.hopfield import HebbHopfield
from baselines.modern_hopfield import ModernHopfield
from baselines.sdm import SparseDistributedMemory
from baselines.universal_hopfield import SEPARATIONS, SIMILARITIES, UniversalHopfield
from membench.budget import TABLE1_BUDGET, hopfield_floats, measure_state
from membench.errors import MembenchError, OverBudgetError
from membench.interface import TaskSpec
from membench.tasks import BinaryTask

SMALL = BinaryTask(num_patterns=5, dim=12, erased=5)
SMALL_BUDGET = hopfield_floats(12)  # 78: a Hopfield network's budget at D = 12 holds 6 whole patterns
STORED = (ModernHopfield, DenseAssociativeMemory, UniversalHopfield)


def _episodes(task, batch: int, seed: int):
    return task.sample(batch, torch.Generator().manual_seed(seed))


def _clamped(values: list[float], query: np.ndarray) -> np.ndarray:
    """Erased entries from `values` (±1 coding) mapped to [0, 1]; known entries from the query."""
    return np.array([query[j] if query[j] != 0.5 else (values[j] + 1) / 2 for j in range(len(query))])


# --- modern Hopfield ----------------------------------------------------------------

def reference_modern(patterns: np.ndarray, query: np.ndarray, beta: float, steps: int) -> np.ndarray:
    rows, q = (2 * patterns - 1).tolist(), (2 * query - 1).tolist()
    xi = list(q)
    for _ in range(steps):
        logits = [beta * sum(r[j] * xi[j] for j in range(len(xi))) for r in rows]
        exps = [math.exp(v - max(logits)) for v in logits]
        new = [sum(e * r[j] for e, r in zip(exps, rows)) / sum(exps) for j in range(len(xi))]
        xi = [q[j] if query[j] != 0.5 else new[j] for j in range(len(xi))]
    return _clamped(xi, query)


def test_modern_hopfield_matches_slow_reference():
    episodes = _episodes(SMALL, 2, 3)
    model = ModernHopfield.from_spec(SMALL.spec, SMALL_BUDGET, beta=0.3, steps=3)
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    for b in range(2):
        for q in range(5):
            expected = reference_modern(episodes.patterns[b].double().numpy(), episodes.queries[b, q].numpy(), 0.3, 3)
            np.testing.assert_allclose(retrieved[b, q].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("num_patterns", [16, 64])
def test_modern_hopfield_retrieves_stored_patterns_exactly(num_patterns):
    task = BinaryTask(num_patterns)
    episodes = _episodes(task, 4, num_patterns)
    for beta in (1.0, 8.0):  # the default, and a large β: the softmax is one-hot
        model = ModernHopfield.from_spec(task.spec, TABLE1_BUDGET, beta=beta)
        retrieved = model.read(model.write(episodes.patterns), episodes.queries)
        assert torch.all(task.errors(retrieved, episodes.patterns) == 0), beta
    assert torch.equal(retrieved, episodes.patterns)


# --- stored patterns: the budget, truncation, clamping and image shapes -----------------

@pytest.mark.parametrize("cls", STORED)
def test_stored_pattern_memories_keep_the_first_whole_patterns_within_the_budget(cls):
    task = BinaryTask(96)
    model = cls.from_spec(task.spec, TABLE1_BUDGET)
    assert model.memory_floats(task.spec) == 64 * 128 and model.memory_floats(BinaryTask(16).spec) == 16 * 128
    episodes = _episodes(task, 2, 0)
    state = model.write(episodes.patterns)
    assert torch.equal(state, 2 * episodes.patterns[:, :64] - 1)          # the first 64, as ±1 rows
    assert measure_state(state, 2) == model.memory_floats(task.spec)
    torch.manual_seed(0)
    retrieved = model.read(state, episodes.queries)
    known = episodes.queries != 0.5
    assert torch.equal(retrieved[known], episodes.queries[known])           # known bits clamped
    assert retrieved.min() >= 0 and retrieved.max() <= 1
    assert torch.all(task.errors(retrieved[:, :64], episodes.patterns[:, :64]) == 0)  # stored: exact
    assert task.errors(retrieved[:, 64:], episodes.patterns[:, 64:]).mean() > 20      # dropped: about chance
    with pytest.raises(OverBudgetError, match="no whole pattern of 128 values fits"):
        cls.from_spec(task.spec, 100)


def test_images_are_flattened_and_only_binary_memories_refuse_real_values():
    real = TaskSpec(pattern_shape=(3, 4, 4), num_patterns=4, binary=False)
    patterns = torch.rand(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    queries = patterns.clone()
    queries[..., :2, :2] = 0.5                                               # a corrupted block
    for model in (ModernHopfield.from_spec(real, 1000, beta=20.0),
                  UniversalHopfield.from_spec(real, 1000, separation="max")):
        retrieved = model.read(model.write(patterns), queries)
        assert retrieved.shape == patterns.shape
        torch.testing.assert_close(retrieved, patterns, atol=1e-4, rtol=0)
    for cls in (DenseAssociativeMemory, SparseDistributedMemory):
        with pytest.raises(MembenchError, match="takes binary patterns"):
            cls.from_spec(real, 1000)
        binary = TaskSpec(pattern_shape=(1, 4, 4), num_patterns=4, binary=True)
        model = cls.from_spec(binary, 1000)
        bits = (patterns[:, :, :1] > 0.5).float()
        assert model.read(model.write(bits), queries[:, :, :1]).shape == bits.shape


# --- dense associative memory -------------------------------------------------------------

def reference_dense(patterns: np.ndarray, query: np.ndarray, interaction, orders: list[np.ndarray]) -> np.ndarray:
    """Asynchronous updates of erased units in the given orders, each to the sign of lower energy."""
    rows = (2 * patterns - 1).astype(int).tolist()
    sigma = (2 * query - 1).tolist()

    def energy(state):
        return -math.fsum(interaction(sum(r[j] * state[j] for j in range(len(state)))) for r in rows)

    for order in orders:
        changed = False
        for unit in order:
            if query[unit] != 0.5:
                continue
            plus = energy(sigma[:unit] + [1.0] + sigma[unit + 1:])
            minus = energy(sigma[:unit] + [-1.0] + sigma[unit + 1:])
            new = 1.0 if plus < minus else -1.0 if minus < plus else sigma[unit]
            changed |= new != sigma[unit]
            sigma[unit] = new
        if not changed:
            break
    return _clamped(sigma, query)


@pytest.mark.parametrize("options, interaction", [
    ({}, lambda x: max(x, 0) ** 3),
    ({"degree": 2}, lambda x: max(x, 0) ** 2),
    ({"interaction": "exp"}, math.exp),
])
def test_dense_am_matches_slow_reference(options, interaction):
    episodes = _episodes(SMALL, 2, 3)
    model = DenseAssociativeMemory.from_spec(SMALL.spec, SMALL_BUDGET, **options)
    torch.manual_seed(11)
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    torch.manual_seed(11)  # redraw the same per-sweep orders the model drew (free units first)
    clamped_last = (episodes.queries != 0.5).float() * 2.0
    orders = [(torch.rand(2, 5, 12) + clamped_last).argsort(-1) for _ in range(model.max_sweeps)]
    for b in range(2):
        for q in range(5):
            expected = reference_dense(episodes.patterns[b].numpy(), episodes.queries[b, q].numpy(), interaction,
                                       [o[b, q].numpy() for o in orders])
            np.testing.assert_array_equal(retrieved[b, q].numpy(), expected)



def test_dense_am_exp_gap_has_the_energy_differences_sign_for_real_valued_overlaps():
    """Under noise corruption the overlaps are not integers: the gap still has the sign of
    E(σ_i = -1) - E(σ_i = +1) = Σ_μ exp(a_μ + ξ_μi) - exp(a_μ - ξ_μi)."""
    model = DenseAssociativeMemory.from_spec(SMALL.spec, SMALL_BUDGET, interaction="exp")
    generator = torch.Generator().manual_seed(3)
    rest = 4 * torch.randn(200, 6, generator=generator, dtype=torch.float64)
    bits = torch.randint(0, 2, (200, 6), generator=generator).double() * 2 - 1
    exact = (torch.exp(rest + bits) - torch.exp(rest - bits)).sum(-1)
    assert torch.equal(model.energy_gap(rest, bits).sign(), exact.sign())

def test_dense_am_retrieves_beyond_hebbian_capacity_at_equal_budget():
    task = BinaryTask(num_patterns=20, dim=64, erased=32)  # Hebbian capacity at D = 64 is about 9 patterns
    episodes = _episodes(task, 4, 0)
    hebb = HebbHopfield(task.spec)
    torch.manual_seed(0)
    hebb_error = task.errors(hebb.read(hebb.write(episodes.patterns), episodes.queries), episodes.patterns).mean()
    assert hebb_error > 1.0
    for options in ({"degree": 3}, {"interaction": "exp"}):
        model = DenseAssociativeMemory.from_spec(task.spec, hopfield_floats(64), **options)  # 32 whole patterns
        torch.manual_seed(0)
        retrieved = model.read(model.write(episodes.patterns), episodes.queries)
        assert torch.equal(retrieved, episodes.patterns), options


# --- universal Hopfield -------------------------------------------------------------------

def reference_universal(patterns: np.ndarray, query: np.ndarray, similarity: str, separation: str,
                        beta: float, degree: float) -> np.ndarray:
    rows, q = (2 * patterns - 1).tolist(), (2 * query - 1).tolist()
    known = [j for j in range(len(q)) if query[j] != 0.5]
    scores = []
    for r in rows:
        if similarity == "dot":
            scores.append(sum(r[j] * q[j] for j in known))
        elif similarity == "euclidean":
            scores.append(-math.sqrt(sum((r[j] - q[j]) ** 2 for j in known)))
        else:
            scores.append(-sum(abs(r[j] - q[j]) for j in known))
        if similarity != "dot" and separation in ("identity", "polynomial"):
            scores[-1] += 2 * (math.sqrt(len(known)) if similarity == "euclidean" else len(known))
    if separation == "softmax":
        weights = [math.exp(beta * (s - max(scores))) for s in scores]
        weights = [w / sum(weights) for w in weights]
    elif separation == "max":
        weights = [1.0 if m == scores.index(max(scores)) else 0.0 for m in range(len(scores))]
    else:
        if separation == "polynomial":
            scores = [math.copysign(abs(s) ** degree, s) for s in scores]
        total = sum(abs(s) for s in scores)
        weights = [s / total if total else 0.0 for s in scores]
    return _clamped([sum(w * r[j] for w, r in zip(weights, rows)) for j in range(len(q))], query)


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("separation", SEPARATIONS)
def test_universal_hopfield_matches_slow_reference(similarity, separation):
    episodes = _episodes(SMALL, 2, 3)
    real = torch.rand(2, 5, 12, generator=torch.Generator().manual_seed(1))  # real values work too
    for patterns, queries in ((episodes.patterns, episodes.queries), (real, real.masked_fill(real < 0.4, 0.5))):
        model = UniversalHopfield.from_spec(SMALL.spec, SMALL_BUDGET, similarity=similarity, separation=separation,
                                            beta=0.5, degree=2)
        retrieved = model.read(model.write(patterns), queries)
        for b in range(2):
            for q in range(5):
                expected = reference_universal(patterns[b].double().numpy(), queries[b, q].double().numpy(),
                                               similarity, separation, 0.5, 2)
                np.testing.assert_allclose(retrieved[b, q].numpy(), expected, atol=1e-5)


def test_universal_hopfield_dot_identity_is_one_hebbian_step():
    task = BinaryTask(num_patterns=30, dim=64, erased=32)
    episodes = _episodes(task, 2, 0)
    model = UniversalHopfield.from_spec(task.spec, TABLE1_BUDGET, similarity="dot", separation="identity")
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    spins = 2 * episodes.patterns - 1
    field = (2 * episodes.queries - 1) @ (spins.transpose(1, 2) @ spins)   # (B, Q, D): Hebbian field
    erased = episodes.queries == 0.5
    assert torch.equal((retrieved > 0.5)[erased], (field > 0)[erased])


def test_dense_am_refuses_a_degree_whose_energy_gaps_overflow_and_reads_at_the_largest_it_takes():
    """At D = 128 the gaps reach 128^degree: finite in float64 up to degree 146, so that degree still recalls
    (every pattern stored, no erased bit left at 0.5) and 147 is refused, not read as all-unchanged."""
    task = BinaryTask(num_patterns=16)
    with pytest.raises(MembenchError, match="degree=147 overflows float64 at D = 128.*at most 146"):
        DenseAssociativeMemory.from_spec(task.spec, TABLE1_BUDGET, degree=147)
    model = DenseAssociativeMemory.from_spec(task.spec, TABLE1_BUDGET, degree=146)
    episodes = _episodes(task, 2, 0)
    assert torch.equal(model.read(model.write(episodes.patterns), episodes.queries), episodes.patterns)
    wide = BinaryTask(num_patterns=16, dim=256, erased=128).spec  # 256^128 = 2^1024: just past float64's range
    with pytest.raises(MembenchError, match="degree=128 overflows float64 at D = 256.*at most 127"):
        DenseAssociativeMemory.from_spec(wide, 4 * TABLE1_BUDGET, degree=128)
    DenseAssociativeMemory.from_spec(wide, 4 * TABLE1_BUDGET, degree=1000, interaction="exp")  # no D^degree there


@pytest.mark.parametrize("option, value, valid", [
    ("similarity", "cosine", "dot, euclidean, manhattan"),
    ("separation", "relu", "identity, polynomial, softmax, max"),
])
def test_universal_hopfield_invalid_option_names_the_valid_values(option, value, valid):
    with pytest.raises(MembenchError, match=f"{option}='{value}' is not valid; choose one of {valid}"):
        UniversalHopfield.from_spec(SMALL.spec, SMALL_BUDGET, **{option: value})
    with pytest.raises(MembenchError, match="beta=-1.0 must be a positive number"):
        UniversalHopfield.from_spec(SMALL.spec, SMALL_BUDGET, beta=-1.0)


# --- sparse distributed memory -------------------------------------------------------------

def reference_sdm(addresses: np.ndarray, patterns: np.ndarray, queries: np.ndarray, radius: int) -> tuple:
    """(counters (M, D), retrievals (Q, D)) of one episode, location by location."""
    dim = patterns.shape[1]
    counters = np.zeros((len(addresses), dim))
    for x in patterns:
        for m, a in enumerate(addresses):
            if sum(int(a[j] != x[j]) for j in range(dim)) <= radius:
                counters[m] += 2 * x - 1
    retrievals = []
    for q in queries:
        known = [j for j in range(dim) if q[j] != 0.5]
        total = np.zeros(dim)
        for m, a in enumerate(addresses):
            if dim / max(len(known), 1) * sum(int(a[j] != q[j]) for j in known) <= radius:
                total += counters[m]
        retrievals.append([q[j] if q[j] != 0.5 else (np.sign(total[j]) + 1) / 2 for j in range(dim)])
    return counters, np.array(retrievals)


@pytest.mark.parametrize("radius", [None, 4])
def test_sdm_matches_slow_reference(radius):
    episodes = _episodes(SMALL, 2, 3)
    model = SparseDistributedMemory.from_spec(SMALL.spec, SMALL_BUDGET, radius=radius)
    assert model.num_locations == 6
    counters = model.write(episodes.patterns)
    retrieved = model.read(counters, episodes.queries)
    addresses = ((model.addresses + 1) / 2).numpy()
    for b in range(2):
        expected_counters, expected = reference_sdm(addresses, episodes.patterns[b].numpy(),
                                                    episodes.queries[b].numpy(), model.radius)
        np.testing.assert_array_equal(counters[b].numpy(), expected_counters)
        np.testing.assert_array_equal(retrieved[b].numpy(), expected)


def test_sdm_counters_fill_the_budget_and_addresses_belong_to_the_model():
    model = SparseDistributedMemory.from_spec(BinaryTask(96).spec, TABLE1_BUDGET)
    assert (model.num_locations, model.radius) == (64, 55)
    assert "addresses" in dict(model.named_buffers())
    assert torch.equal(model.addresses, SparseDistributedMemory.from_spec(BinaryTask(96).spec, TABLE1_BUDGET).addresses)
    assert not torch.equal(model.addresses, SparseDistributedMemory.from_spec(BinaryTask(96).spec, TABLE1_BUDGET,
                                                                              seed=1).addresses)
    for num_patterns in (16, 96):
        task = BinaryTask(num_patterns)
        counters = model.write(_episodes(task, 2, 0).patterns)
        assert counters.shape == (2, 64, 128) and counters.dtype == torch.float32
        assert measure_state(counters, 2) == model.memory_floats(task.spec) == 64 * 128 <= TABLE1_BUDGET


def test_sdm_retrieves_lightly_erased_stored_patterns_at_small_n():
    task = BinaryTask(num_patterns=2, erased=8)
    episodes = _episodes(task, 32, 0)
    model = SparseDistributedMemory.from_spec(task.spec, TABLE1_BUDGET)
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    errors = task.errors(retrieved, episodes.patterns)
    assert (errors == 0).float().mean() >= 0.9 and errors.mean() < 1.0   # passthrough: 8 bits
    known = episodes.queries != 0.5
    assert torch.equal(retrieved[known], episodes.queries[known])
