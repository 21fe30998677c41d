"""EBMM: memory count, read and write descend their objectives, batched = plain loops, training."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from ebmm.config import EBMMConfig
from ebmm.memory import EBMM
from membench.budget import TABLE1_BUDGET, check_declared
from membench.errors import MembenchError, OverBudgetError, TrainingDiverged
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train

SMALL = dict(hidden=80, hops=2, read_steps=3, write_steps=2)


def small_model(num_patterns: int = 4, **options) -> tuple[EBMM, BinaryTask]:
    torch.manual_seed(0)
    task = BinaryTask(num_patterns)
    return EBMM.from_spec(task.spec, TABLE1_BUDGET, "quick", **{**SMALL, **options}), task


def episodes(task: BinaryTask, batch: int = 3):
    return task.sample(batch, torch.Generator().manual_seed(1), split="train")


def test_memory_count_is_the_table1_budget():
    task = BinaryTask(96)
    for preset in ("quick", "paper"):  # hidden 128 and 1024: the static size does not count
        model = EBMM.from_spec(task.spec, TABLE1_BUDGET, preset)
        assert check_declared(model, task.spec, TABLE1_BUDGET, "ebmm") == 8256 == TABLE1_BUDGET
    state = model.write(task.sample(2, torch.Generator().manual_seed(0)).patterns)
    assert set(state) == {"memory.weight", "memory.bias"}
    assert sum(t[0].numel() for t in state.values()) == 8256  # one episode's written state
    with pytest.raises(OverBudgetError):
        check_declared(EBMM.from_spec(task.spec, TABLE1_BUDGET, "quick", memory_size=65), task.spec,
                     TABLE1_BUDGET, "ebmm")


def test_read_lowers_the_energy():
    model, task = small_model(read_step_init=0.01, momentum_init=0.1)
    batch = episodes(task)
    with torch.no_grad():
        state = model.write(batch.patterns)
        retrieved = model.read(state, batch.queries)
        before = model.batched_energy(state, batch.queries)
        after = model.batched_energy(state, retrieved)
    assert retrieved.shape == batch.queries.shape and 0 <= retrieved.min() and retrieved.max() <= 1
    assert (after < before).float().mean() > 0.9, "gradient reading should lower the energy of most queries"


def writing_loss(model: EBMM, writable: dict, patterns: torch.Tensor) -> torch.Tensor:
    """Per-episode E + ||grad_x E||^2 + ||theta - theta_bar||^2 (alpha = beta = 1), shape (B,)."""
    with torch.enable_grad():
        x = patterns.clone().requires_grad_(True)
        energy = model.batched_energy(writable, x)
        grad_x = torch.autograd.grad(energy.sum(), x)[0]
    params = dict(model.energy.named_parameters())
    deviation = sum((writable[n] - params[n]).pow(2).flatten(1).sum(1) for n in model.writable_names)
    return (energy.mean(1) + grad_x.pow(2).sum(-1).mean(1) + deviation).detach()


def test_write_lowers_the_writing_loss():
    model, task = small_model(grad_norm_term=True, write_lr_init=1e-3, write_steps=3)
    batch = episodes(task)
    params = dict(model.energy.named_parameters())
    initial = {n: params[n].detach().expand(batch.patterns.shape[0], *params[n].shape) for n in model.writable_names}
    with torch.no_grad():
        written = model.write(batch.patterns)
    assert (writing_loss(model, written, batch.patterns) < writing_loss(model, initial, batch.patterns)).all()


def plain_write_read(model: EBMM, patterns: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """One episode at a time with a plain module copy and torch.autograd.grad: reference loops."""
    rates = torch.nn.functional.softplus(model.write_lr).detach()
    factors = [s.detach().exp() for s in model.write_scale] if model.cfg.elementwise_write_lr else None
    carries = torch.sigmoid(model.write_momentum).detach() if hasattr(model, "write_momentum") else None
    steps = [torch.nn.functional.softplus(model.read_step).detach()]
    momenta = [torch.sigmoid(model.momentum).detach()]
    for k in range(model.cfg.read_steps - 1):
        steps.append(steps[-1] * torch.sigmoid(model.read_step_decay[k]).detach())
        momenta.append(momenta[-1] * torch.sigmoid(model.momentum_decay[k]).detach())
    outputs = []
    for x_written, query in zip(patterns, queries):
        energy = copy.deepcopy(model.energy)
        params = dict(energy.named_parameters())
        writable = [params[n] for n in model.writable_names]
        initial = [p.detach().clone() for p in writable]
        moved = [torch.zeros_like(p) for p in writable]  # the heavy-ball write's step before's move
        for step in range(model.cfg.write_steps):
            x = x_written.clone().requires_grad_(True)
            e = energy(x)
            grad_x = torch.autograd.grad(e.sum(), x, create_graph=True)[0]
            g_energy = torch.autograd.grad(e.mean(), writable, retain_graph=True)
            g_norm = torch.autograd.grad(grad_x.pow(2).sum(-1).mean(), writable)
            with torch.no_grad():
                for j, p in enumerate(writable):
                    update = rates[step, j, 0] * g_energy[j] + rates[step, j, 1] * g_norm[j] \
                        + rates[step, j, 2] * 2 * (p - initial[j])
                    move = update if factors is None else factors[j][step] * update
                    if carries is not None and step > 0:
                        move = move + carries[step - 1] * moved[j]
                    moved[j] = move
                    p -= move
        x, velocity = query.clone(), torch.zeros_like(query)
        for step, momentum in zip(steps, momenta):
            look = (x + momentum * velocity).clamp(0, 1).requires_grad_(True)
            grad = torch.autograd.grad(energy(look).sum(), look)[0]
            velocity = momentum * velocity - step * grad
            x = (x + velocity).clamp(0, 1).detach()
        outputs.append(x)
    return torch.stack(outputs)


@pytest.mark.parametrize("elementwise, write_momentum, write_steps", [(True, 0.3, 3), (True, None, 2),
                                                                     (False, None, 2)])
def test_batched_inner_loops_match_plain_autograd_loops(elementwise: bool, write_momentum: float | None,
                                                         write_steps: int):
    model, task = small_model(grad_norm_term=True, write_lr_init=0.05, read_step_init=0.5,
                              elementwise_write_lr=elementwise, write_momentum=write_momentum, write_steps=write_steps)
    with torch.no_grad():
        if elementwise:  # factors other than 1, different per step and entry
            for factors in model.write_scale:
                factors.copy_(torch.randn(factors.shape, generator=torch.Generator().manual_seed(4)) * 0.5)
        if write_momentum is not None:  # a momentum per carried step, each its own (0.27 and 0.62)
            model.write_momentum.copy_(torch.tensor([-1.0, 0.5]))
    batch = episodes(task)
    with torch.no_grad():
        batched = model.read(model.write(batch.patterns), batch.queries)
    reference = plain_write_read(model, batch.patterns, batch.queries)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)
    # the training path (create_graph) computes the same retrievals as evaluation
    _, retrievals = model.meta_loss(batch.patterns, batch.queries)
    torch.testing.assert_close(retrievals.detach(), batched, rtol=1e-5, atol=1e-5)


def literal_gated_rnn(energy, x: torch.Tensor) -> torch.Tensor:
    """The App. B.1 recurrence exactly as its docstring writes it: x (M, D) -> (M,)."""
    x = 2 * x - 1 if energy.scale == 2 else x  # signed_input (ours, the default): ±1 coding
    state = x.new_zeros(x.shape[0], energy.hidden)
    for _ in range(energy.hops):
        z = torch.cat([x, state], dim=-1)
        if energy.linear_memory:  # ours: the memory units without the tanh
            candidate = torch.cat([energy.memory(x), torch.tanh(energy.static(z))], dim=-1)
        else:
            candidate = torch.tanh(torch.cat([energy.memory(x), energy.static(z)], dim=-1))
        update = torch.sigmoid(energy.gate(z))
        state = update * candidate + (1 - update) * state
    return energy.readout(state).squeeze(-1)


@pytest.mark.parametrize("linear_memory, signed_input", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("hops", [1, 3])
def test_gated_rnn_energy_is_the_literal_recurrence(hops: int, linear_memory: bool, signed_input: bool):
    model, task = small_model(hops=hops, linear_memory=linear_memory, signed_input=signed_input)
    with torch.no_grad():  # nonzero biases, so hoisting the x-halves out of the hops is tested too
        for layer in (model.energy.memory, model.energy.static, model.energy.gate):
            layer.bias.normal_()
    x = torch.rand(7, task.spec.pattern_size)
    torch.testing.assert_close(model.energy(x), literal_gated_rnn(model.energy, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("linear_memory, signed_input", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_closed_form_gradients_are_autograds(hops: int, linear_memory: bool, signed_input: bool):
    """GatedRNNEnergy.grads (the backward written out) and grad_norm_grads (its derivative along grad_x E,
    written out) equal autograd, per episode, in float64, with tanh or linear memory units, x coded ±1 or not."""
    model, task = small_model(hops=hops, linear_memory=linear_memory, signed_input=signed_input)
    energy = model.energy.double()
    with torch.no_grad():
        for layer in (energy.memory, energy.static, energy.gate):
            layer.bias.normal_()
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 5, task.spec.pattern_size, generator=generator, dtype=torch.float64)
    writable = {name: (param.detach() + 0.1 * torch.randn(3, *param.shape, generator=generator, dtype=torch.float64))
                for name, param in energy.named_parameters() if name in energy.writable_names}
    grad_x, grad_writable = energy.grads(writable, x)
    for b in range(3):
        episode = {name: t[b].clone().requires_grad_(True) for name, t in writable.items()}
        xb = x[b].clone().requires_grad_(True)
        total = torch.func.functional_call(energy, episode, (xb,), strict=False).sum()
        expected = torch.autograd.grad(total, [xb, *episode.values()])
        torch.testing.assert_close(grad_x[b], expected[0])
        for name, value in zip(episode, expected[1:]):
            torch.testing.assert_close(grad_writable[name][b], value, msg=f"gradient of {name} differs")
    energy_grads, norm_grads = energy.grad_norm_grads(writable, x)
    for name in writable:
        torch.testing.assert_close(energy_grads[name], grad_writable[name])
    for b in range(3):  # grad_theta sum_i ||grad_x E(x_i)||^2 by double backward
        episode = {name: t[b].clone().requires_grad_(True) for name, t in writable.items()}
        xb = x[b].clone().requires_grad_(True)
        total = torch.func.functional_call(energy, episode, (xb,), strict=False).sum()
        norm = torch.autograd.grad(total, xb, create_graph=True)[0].pow(2).sum()
        for name, value in zip(episode, torch.autograd.grad(norm, list(episode.values()))):
            torch.testing.assert_close(norm_grads[name][b], value, msg=f"grad-norm gradient of {name} differs")


class _AutogradOnlyEnergy(type(small_model()[0].energy)):
    grads = None  # no closed form: EBMM differentiates this energy with vmap + autograd


@pytest.mark.parametrize("grad_norm_term, linear_memory, write_momentum", [(False, False, None), (True, False, None),
                                                                          (True, True, None), (True, False, 0.4)])
def test_closed_form_and_autograd_paths_give_the_same_meta_gradient(grad_norm_term: bool, linear_memory: bool,
                                                                    write_momentum: float | None):
    """The meta-loss and its gradient are the same whether the inner loops use the closed form or autograd."""
    model, task = small_model(grad_norm_term=grad_norm_term, write_lr_init=0.05, read_step_init=0.5,
                              linear_memory=linear_memory, write_momentum=write_momentum)
    model = model.double()
    energy = copy.deepcopy(model.energy)
    energy.__class__ = _AutogradOnlyEnergy
    other = EBMM(model.spec, energy, model.cfg).double()
    other.load_state_dict(model.state_dict())
    assert model._closed_form and not other._closed_form
    batch = episodes(task)
    patterns, queries = batch.patterns.double(), batch.queries.double()
    results = []
    for memory in (model, other):
        loss, retrievals = memory.meta_loss(patterns, queries)
        results.append((loss, retrievals, torch.autograd.grad(loss, list(memory.parameters()))))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for (name, _), a, b in zip(model.named_parameters(), results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, msg=f"meta-gradient of {name} differs")


@pytest.mark.parametrize("options", [{}, {"learn_write_norm": True, "elementwise_write_lr": True},
                                     {"grad_norm_term": False}, {"read_known": False}, {"stepwise_loss": False},
                                     {"n_scaled_rates": True}, {"precondition_write": 0.7}, {"contrast_steps": 0},
                                     {"contrast_steps": 2, "read_known": False}, {"denoise_steps": 2},
                                     {"contrast_steps": 1, "denoise_steps": 1}, {"write_momentum": 0.4}])
def test_the_meta_gradient_is_the_meta_losss_derivative(options: dict):
    """Backpropagation through every write step (second order) and every read step gives the derivative of the
    meta-loss: central differences agree for sampled entries of every parameter tensor (float64, random
    weights away from the initial ones), none is without a gradient, and the evaluation path (write, then
    read) retrieves exactly what the meta-loss scored. Nothing on the way is detached."""
    torch.manual_seed(0)
    task = BinaryTask(5, dim=10, erased=5)
    model = EBMM.from_spec(task.spec, 10**6, "quick", hidden=7, memory_size=3, hops=2, read_steps=3,
                           write_steps=3, write_lr_init=0.5, read_step_init=1.0, **options).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    batch = episodes(task)
    patterns, queries = batch.patterns.double(), batch.queries.double()
    loss, retrievals = model.meta_loss(patterns, queries)
    gradients = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    picks = torch.Generator().manual_seed(2)
    for (name, parameter), gradient in zip(model.named_parameters(), gradients):
        assert gradient is not None and gradient.abs().max() > 0, f"{name} gets no meta-gradient"
        flat = parameter.data.view(-1)
        for index in torch.randperm(flat.numel(), generator=picks)[:2].tolist():
            kept, step = flat[index].item(), 1e-6
            flat[index] = kept + step
            higher = model.meta_loss(patterns, queries)[0].item()
            flat[index] = kept - step
            lower = model.meta_loss(patterns, queries)[0].item()
            flat[index] = kept
            numeric = (higher - lower) / (2 * step)
            assert numeric == pytest.approx(gradient.view(-1)[index].item(), rel=1e-5, abs=1e-9), (name, index)
    with torch.no_grad():
        torch.testing.assert_close(model.read(model.write(patterns), queries), retrievals)


def test_the_preconditioned_write_decorrelates_the_stored_patterns_outer_products():
    """The memory layer's writing gradient is sum_i delta_i a_i^T (a_i: pattern i's input, 2x - 1 with a 1 for
    the bias); preconditioned, it is sum_i delta'_i a_i^T with delta' = (K / N + lambda I)^-1 delta, K the
    patterns' Gram matrix a_i . a_j: the write's outer products decorrelated across the patterns. The option
    needs the gated RNN and a positive damping."""
    from ebmm.energy_binary import GatedRNNEnergy

    torch.manual_seed(0)
    energy = GatedRNNEnergy(dim=10, memory_size=3, hidden=7, hops=2).double()
    x = torch.randint(0, 2, (2, 4, 10)).double()                         # B = 2 episodes of N = 4 patterns
    delta = torch.randn(2, 4, 3, dtype=torch.float64)                      # dE / d written per pattern
    inputs = torch.cat([2 * x - 1, torch.ones(2, 4, 1, dtype=torch.float64)], dim=-1)  # (B, N, D + 1)
    gradient = {"memory.weight": delta.transpose(1, 2) @ (2 * x - 1), "memory.bias": delta.sum(1)}
    damping = torch.tensor(0.5, dtype=torch.float64)
    out = energy.precondition(gradient, energy.write_preconditioner(x, damping))
    gram = inputs @ inputs.transpose(1, 2) / 4 + damping * torch.eye(4, dtype=torch.float64)
    expected = torch.linalg.solve(gram, delta).transpose(1, 2) @ inputs     # (B, d, D + 1)
    torch.testing.assert_close(out["memory.weight"], expected[..., :10])
    torch.testing.assert_close(out["memory.bias"], expected[..., 10])
    with pytest.raises(MembenchError, match="precondition_write applies to the gated_rnn energy only"):
        EBMMConfig(energy="resnet_fc", precondition_write=1.0)
    with pytest.raises(MembenchError, match="precondition_write=0.0 must be a finite number > 0"):
        EBMMConfig(precondition_write=0.0)


def test_init_gain_scales_the_gated_rnns_initial_weights_and_leaves_the_default_key_alone():
    """init_gain g starts every weight of the gated RNN at g times the default draw (the same seed: the same
    draw), biases at 0; the default's checkpoint key is the one without the field (shipped checkpoints keep
    theirs); the image energies refuse it."""
    from membench.build import build_model
    from membench.run_identity import checkpoint_key
    from membench.run_spec import RunSpec

    plain, _ = small_model()
    scaled, _ = small_model(init_gain=2 ** 0.5)
    for (name, a), (_, b) in zip(plain.energy.named_parameters(), scaled.energy.named_parameters()):
        expected = a * 2 ** 0.5 if name.endswith("weight") else a
        torch.testing.assert_close(b, expected, rtol=0, atol=0, msg=name)
    spec = RunSpec(suite="table1-learned", model="ebmm", task=BinaryTask(16).config(), budget=TABLE1_BUDGET,
                   seed=0, queries=16)
    task = BinaryTask(16)

    def key(options: dict) -> str:
        run = dataclasses.replace(spec, options=options)
        return checkpoint_key(run, build_model(run, task), task)

    assert key({}) == key({"init_gain": 1.0}) != key({"init_gain": 2.0})
    with pytest.raises(MembenchError, match="init_gain applies to the gated_rnn energy only, not resnet_fc"):
        EBMMConfig(energy="resnet_fc", init_gain=2.0)


def test_signed_input_off_reads_x_as_given_and_leaves_the_default_key_alone():
    """signed_input=False: the gated RNN's layers read x in [0, 1] itself, so an erased entry (0.5) and a 1
    enter as they are (with it on, as 0 and 1 from 2x - 1); the same weights give other energies; the default's
    checkpoint key is the one without the field; the image energies refuse it."""
    from membench.build import build_model
    from membench.run_identity import checkpoint_key
    from membench.run_spec import RunSpec

    signed, task = small_model()
    plain, _ = small_model(signed_input=False)
    plain.load_state_dict(signed.state_dict())
    x = torch.tensor([[0.0, 0.5, 1.0] * 4 + [1.0] * (task.spec.pattern_size - 12)])
    torch.testing.assert_close(plain.energy.coded(x), x, rtol=0, atol=0)
    torch.testing.assert_close(signed.energy.coded(x), 2 * x - 1, rtol=0, atol=0)
    assert not torch.allclose(plain.energy(x), signed.energy(x))
    spec = RunSpec(suite="table1-learned", model="ebmm", task=BinaryTask(16).config(), budget=TABLE1_BUDGET,
                   seed=0, queries=16)

    def key(options: dict) -> str:
        run = dataclasses.replace(spec, options=options)
        return checkpoint_key(run, build_model(run, BinaryTask(16)), BinaryTask(16))

    assert key({}) == key({"signed_input": True}) != key({"signed_input": False})
    with pytest.raises(MembenchError, match="signed_input applies to the gated_rnn energy only, not resnet_conv"):
        EBMMConfig(energy="resnet_conv", signed_input=False)


def test_the_contrastive_write_raises_the_energy_where_the_models_own_read_takes_erased_patterns():
    """contrast_steps k: pattern i's negative is pattern i with its fixed mask's entries (the share contrast_erase,
    the same masks in every model) at the fill value, moved by the first k steps of the model's read; the write's
    extra term is the gradient of -sum_i E(n_i) / N with the negatives held, and a write made of that term alone
    raises the energy at them. The default leaves the checkpoint key alone; bad values are refused."""
    from membench.build import build_model
    from membench.run_identity import checkpoint_key
    from membench.run_spec import RunSpec

    model, task = small_model(contrast_steps=1, contrast_erase=0.25)
    model = model.double()
    assert torch.equal(model.contrast_masks, small_model(contrast_steps=0, contrast_erase=0.25)[0].contrast_masks)
    assert (model.contrast_masks.sum(-1) == 32).all() and len({m.tolist().__str__() for m in model.contrast_masks}) > 1
    patterns = episodes(task).patterns.double()                                      # (B, N, D)
    masks = model.contrast_masks[:patterns.shape[1]]
    erased = torch.where(masks, torch.full_like(patterns, 0.5), patterns)
    theta = {n: p.unsqueeze(0).expand(patterns.shape[0], *p.shape).clone()
             for n, p in model.energy.named_parameters() if n in model.writable_names}
    negatives = model._read(theta, erased, create_graph=False)[0]
    assert not torch.equal(negatives, erased)  # the read moved them
    contrast = model._term_grads(theta, patterns, None, create_graph=False, erased=erased)[-1]
    held = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    expected = torch.autograd.grad(-model.batched_energy(held, negatives).sum() / patterns.shape[1],
                                   [held[n] for n in model.writable_names])
    for name, got, want in zip(model.writable_names, contrast, expected):
        torch.testing.assert_close(got, want, msg=name)
    with torch.no_grad():  # a write of the contrast term alone (the others' rates ~0) raises E at the negatives
        model.write_lr[..., :-2].fill_(-30.0)
        model.write_lr[..., -1].fill_(-30.0)
        model.write_lr[..., -2].fill_(-4.0)
        before = model.batched_energy(theta, negatives)
        after = model.batched_energy(model.write(patterns), negatives)
    assert (after > before).float().mean() > 0.9, (after - before)
    spec = RunSpec(suite="table1-learned", model="ebmm", task=BinaryTask(16).config(), budget=TABLE1_BUDGET,
                   seed=0, queries=16)

    def key(options: dict) -> str:
        run = dataclasses.replace(spec, options=options)
        return checkpoint_key(run, build_model(run, BinaryTask(16)), BinaryTask(16))

    assert key({}) == key({"contrast_erase": 0.5, "contrast_lr_init": 0.01}) != key({"contrast_steps": 0})
    with pytest.raises(MembenchError, match="contrast_steps applies to the gated_rnn energy only"):
        EBMMConfig(energy="resnet_fc", contrast_steps=0)
    with pytest.raises(MembenchError, match="contrast_steps=6 must be null or an integer from 0 to read_steps=5"):
        EBMMConfig(contrast_steps=6)
    with pytest.raises(MembenchError, match="contrast_erase=1.0 must lie strictly between 0 and 1"):
        EBMMConfig(contrast_steps=0, contrast_erase=1.0)


def test_the_denoising_write_descends_the_reconstruction_loss_of_the_models_own_read():
    """denoise_steps k: the write's extra term is the gradient of sum_k sum_i ||x_i - read^(k)(e_i)||^2 / N, e_i
    pattern i with a fixed mask's entries erased, other masks at every write step; a write of that term alone
    lowers the loss it descends, under no_grad too (evaluation), and inference mode is refused in one line. Each
    term's rate starts in its own column; the default leaves the checkpoint key alone; bad values are refused."""
    from membench.build import build_model
    from membench.run_identity import checkpoint_key
    from membench.run_spec import RunSpec

    model, task = small_model(denoise_steps=2, write_steps=2)
    model = model.double()
    assert torch.equal(model.contrast_masks, small_model(contrast_steps=0)[0].contrast_masks)
    patterns = episodes(task).patterns.double()                                      # (B, N, D)
    n = patterns.shape[1]
    first, second = model._erased(patterns, n), model._erased(patterns, 2 * n)       # write steps 1 and 2
    assert torch.equal(first, torch.where(model.contrast_masks[n:2 * n], torch.full_like(patterns, 0.5), patterns))
    assert not torch.equal(first, second) and ((first == 0.5).sum(-1) == 64).all()
    theta = {name: p.unsqueeze(0).expand(patterns.shape[0], *p.shape).clone()
             for name, p in model.energy.named_parameters() if name in model.writable_names}

    def loss(memory: dict, start: torch.Tensor, graph: bool = False) -> torch.Tensor:
        return sum((patterns - x).pow(2).sum() for x in model._read(memory, start, create_graph=graph, limit=2))

    got = model._term_grads(theta, patterns, None, create_graph=False, noisy=first)[-1]
    held = {name: t.clone().requires_grad_(True) for name, t in theta.items()}
    with torch.enable_grad():
        expected = torch.autograd.grad(loss(held, first, True) / n, [held[name] for name in model.writable_names])
    for name, g, want in zip(model.writable_names, got, expected):
        torch.testing.assert_close(g, want, msg=name)
    with torch.no_grad():  # a write of the denoising term alone (the others' rates ~0) lowers its loss
        model.write_lr.fill_(-30.0)
        model.write_lr[..., -2].fill_(-3.0)
        before = loss(theta, first) + loss(theta, second)
        written = model.write(patterns)
        after = loss(written, first) + loss(written, second)
    assert after < before, (before, after)
    spec = RunSpec(suite="table1-learned", model="ebmm", task=BinaryTask(16).config(), budget=TABLE1_BUDGET,
                   seed=0, queries=16)

    def key(options: dict) -> str:
        run = dataclasses.replace(spec, options=options)
        return checkpoint_key(run, build_model(run, BinaryTask(16)), BinaryTask(16))

    with torch.inference_mode(), pytest.raises(MembenchError, match="torch.inference_mode forbids"):
        model.write(patterns)
    # each term's rate starts in its own column: E, ||grad_x E||^2, -E(n), reconstruction, anchor
    for options, starts in (({}, [1.0, 0.2, 0.03, 0.07, 0.5]), ({"grad_norm_term": False}, [1.0, 0.03, 0.07, 0.5])):
        rates = small_model(write_lr_init=1.0, grad_norm_lr_init=0.2, contrast_steps=1, contrast_lr_init=0.03,
                            denoise_steps=1, denoise_lr_init=0.07, anchor_lr_init=0.5, **options)[0].write_lr
        torch.testing.assert_close(torch.nn.functional.softplus(rates), torch.tensor(starts).expand_as(rates))
    assert key({}) == key({"denoise_lr_init": 0.01}) != key({"denoise_steps": 1})
    with pytest.raises(MembenchError, match="denoise_steps applies to the gated_rnn energy only"):
        EBMMConfig(energy="resnet_fc", denoise_steps=1)
    with pytest.raises(MembenchError, match="denoise_steps=0 must be null or an integer from 1 to read_steps=5"):
        EBMMConfig(denoise_steps=0)


def test_last_iterate_loss_scores_the_final_retrieval_only():
    stepwise, task = small_model()
    last, _ = small_model(stepwise_loss=False)  # the same weights (seed 0), the loss on x^(K) alone
    batch = episodes(task)
    with torch.no_grad():
        iterates = stepwise._read(stepwise.write(batch.patterns), batch.queries, create_graph=False)
        errors = [(batch.patterns - x).pow(2).sum(-1).mean() for x in iterates]
        loss_all, _ = stepwise.meta_loss(batch.patterns, batch.queries)
        loss_last, retrievals = last.meta_loss(batch.patterns, batch.queries)
    assert len(errors) == 3 and min(errors) > 0
    torch.testing.assert_close(loss_all, sum(errors))
    torch.testing.assert_close(loss_last, errors[-1])
    torch.testing.assert_close(retrievals, iterates[-1])


def test_meta_gradient_reaches_every_meta_parameter():
    model, task = small_model(grad_norm_term=True)
    batch = episodes(task)
    loss, _ = model.meta_loss(batch.patterns, batch.queries)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"no finite meta-gradient for {name}"
        assert param.grad.abs().sum() > 0, f"the meta-gradient of {name} is zero: the meta-loss does not use it"


def tiny_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, lr=1e-3, clip_norm=1.0, log_every=1, checkpoint_every=2,
                       num_patterns=(4, 8))


def test_checkpoint_resume_continues_training(tmp_path: Path):
    device = torch.device("cpu")
    straight, task = small_model()
    meta_train(straight, task, tiny_config(4), tmp_path / "straight.pt", device, seed=0, progress=False)
    resumed, _ = small_model()
    meta_train(resumed, task, tiny_config(2), tmp_path / "resumed.pt", device, seed=0, progress=False)
    fresh, _ = small_model()  # a new process: same init, then the checkpoint takes over
    result = meta_train(fresh, task, tiny_config(4), tmp_path / "resumed.pt", device, seed=0, progress=False)
    assert result.steps == 4 and [row["step"] for row in result.curve] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), f"resumed training differs from straight training in {name}"


def test_nan_divergence_is_reported(tmp_path: Path):
    model, task = small_model()
    with torch.no_grad():
        model.energy.readout.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged at step 1"):
        meta_train(model, task, tiny_config(2), tmp_path / "nan.pt", torch.device("cpu"), seed=0, progress=False)


def test_write_norm_power_scales_the_first_write_step():
    """One write step from theta_bar moves theta by the pattern terms' weight: N^-1 (mean), N^-0.5 or 1 (sum)."""
    batch = episodes(BinaryTask(16), batch=2)
    moves = {}
    for name, options in (("mean", {}), ("sqrt", {"write_norm_power": 0.5}), ("sum", {"write_mean": False})):
        model, _ = small_model(16, write_steps=1, learn_write_norm=False, **options)
        initial = model.energy.memory.weight.detach().clone()
        moves[name] = model.write(batch.patterns)["memory.weight"] - initial
    torch.testing.assert_close(moves["sqrt"], 4 * moves["mean"])
    torch.testing.assert_close(moves["sum"], 16 * moves["mean"])
    with pytest.raises(MembenchError, match="write_norm_power=0.5 needs write_mean=True"):
        small_model(16, write_norm_power=0.5, write_mean=False, learn_write_norm=False)


def test_a_learned_write_norm_starts_as_the_mean_and_is_meta_learned():
    """learn_write_norm: the power starts at 1 (the paper's mean: the same write) and gets a meta-gradient."""
    batch = episodes(BinaryTask(16), batch=2)
    plain, _ = small_model(16, learn_write_norm=False)
    learned, _ = small_model(16, learn_write_norm=True)
    for name, tensor in plain.write(batch.patterns).items():
        torch.testing.assert_close(learned.write(batch.patterns)[name], tensor)
    loss, _ = learned.meta_loss(batch.patterns, batch.queries)
    loss.backward()
    assert learned.write_norm.grad is not None and learned.write_norm.grad.abs() > 0


@pytest.mark.parametrize("closed_form", [True, False])
def test_elementwise_write_rates_start_as_the_shared_ones_and_scale_each_entry(closed_form: bool):
    """elementwise_write_lr: factors exp(0) = 1 give the plain write; a factor of 3 on one entry at the only
    write step triples that entry's move alone; every step's factors get a meta-gradient (closed-form and
    autograd). Factors at several steps are checked against reference loops (test_batched_inner_loops_...)."""
    batch = episodes(BinaryTask(8), batch=2)
    plain, _ = small_model(8, write_steps=1, elementwise_write_lr=False)
    scaled, _ = small_model(8, write_steps=1, elementwise_write_lr=True)
    if not closed_form:
        plain._closed_form = scaled._closed_form = False
    assert scaled.write_scale[0].shape == (1, *scaled.energy.memory.weight.shape)
    initial = plain.energy.memory.weight.detach().clone()
    move = plain.write(batch.patterns)["memory.weight"] - initial
    torch.testing.assert_close(scaled.write(batch.patterns)["memory.weight"] - initial, move)
    with torch.no_grad():
        scaled.write_scale[0][0, 2, 5] = torch.tensor(3.0).log()
    expected = move.clone()
    expected[:, 2, 5] *= 3
    torch.testing.assert_close(scaled.write(batch.patterns)["memory.weight"] - initial, expected)
    deeper, _ = small_model(8, write_steps=3, elementwise_write_lr=True)
    deeper._closed_form = closed_form
    loss, _ = deeper.meta_loss(batch.patterns, batch.queries)
    loss.backward()
    for factors in deeper.write_scale:
        assert factors.grad is not None and (factors.grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("closed_form", [True, False])
def test_n_scaled_rates_start_as_the_plain_ones_and_scale_every_rate_by_a_power_of_n(closed_form: bool):
    """n_scaled_rates: exponents 0 give the plain write at any N; exponent 1 on every rate at N = 32 halves a
    single write step's move (32 / 64), and exponent -1 at N = 128 halves it too; every exponent gets a
    meta-gradient."""
    for num_patterns, power in ((32, 1.0), (128, -1.0)):
        batch = episodes(BinaryTask(num_patterns), batch=2)
        plain, _ = small_model(num_patterns, write_steps=1)
        scaled, _ = small_model(num_patterns, write_steps=1, n_scaled_rates=True)
        if not closed_form:
            plain._closed_form = scaled._closed_form = False
        initial = plain.energy.memory.weight.detach().clone()
        move = plain.write(batch.patterns)["memory.weight"] - initial
        torch.testing.assert_close(scaled.write(batch.patterns)["memory.weight"] - initial, move)
        with torch.no_grad():
            scaled.write_lr_power.fill_(power)
        torch.testing.assert_close(scaled.write(batch.patterns)["memory.weight"] - initial, move / 2)
    deeper, _ = small_model(48, write_steps=2, n_scaled_rates=True)
    deeper._closed_form = closed_form
    batch = episodes(BinaryTask(48), batch=2)
    deeper.meta_loss(batch.patterns, batch.queries)[0].backward()
    assert deeper.write_lr_power.grad is not None and (deeper.write_lr_power.grad[:, :, 0].abs() > 0).all()


@pytest.mark.parametrize("closed_form", [True, False])
def test_a_momentum_write_carries_each_steps_move_into_the_next(closed_form: bool):
    """write_momentum: a write step whose own rates are all but 0 moves by the momentum times the step before's
    move (0.3 here, then 0.3 of that again); a momentum near 0 gives the plain write; the momenta get a
    meta-gradient. With one write step it has nothing to carry (no parameter, the plain write); a value that is not
    a sigmoid's is refused."""
    batch = episodes(BinaryTask(8), batch=2)
    carried, _ = small_model(8, write_steps=3, write_momentum=0.3)
    plain, _ = small_model(8, write_steps=3, write_momentum=None)
    if not closed_form:
        plain._closed_form = carried._closed_form = False
    with torch.no_grad():
        carried.write_momentum.fill_(-40.0)  # sigmoid: 4e-18
    torch.testing.assert_close(carried.write(batch.patterns), plain.write(batch.patterns))
    first, _ = small_model(8, write_steps=1)
    with torch.no_grad():
        carried.write_momentum.fill_(torch.tensor(0.3).logit().item())
        carried.write_lr[1:] = -60.0  # softplus: 9e-27, every term's and the anchor's rate at steps 2 and 3
    initial = carried.energy.memory.weight.detach()
    move = first.write(batch.patterns)["memory.weight"] - initial  # the same weights and first step
    torch.testing.assert_close(carried.write(batch.patterns)["memory.weight"] - initial, move * (1 + 0.3 + 0.09))
    carried.meta_loss(batch.patterns, batch.queries)[0].backward()
    assert carried.write_momentum.grad is not None and (carried.write_momentum.grad.abs() > 0).all()
    single, _ = small_model(8, write_steps=1, write_momentum=0.5)
    assert not hasattr(single, "write_momentum")
    torch.testing.assert_close(single.write(batch.patterns), first.write(batch.patterns))
    for bad in (1.0, 0.0):
        with pytest.raises(MembenchError, match="write_momentum"):
            small_model(8, write_momentum=bad)


@pytest.mark.parametrize("grad_norm_term", [True, False])
def test_each_writing_term_starts_at_its_own_rate(grad_norm_term: bool):
    """write_lr holds (step, tensor, term) rates: energy at write_lr_init, alpha ||grad_x E||^2 (when on) at
    grad_norm_lr_init, beta ||theta - theta_bar||^2 (last) at anchor_lr_init."""
    model, _ = small_model(grad_norm_term=grad_norm_term, write_lr_init=3.0, grad_norm_lr_init=0.01,
                           anchor_lr_init=0.25)
    rates = torch.nn.functional.softplus(model.write_lr.detach())
    expected = (3.0, 0.01, 0.25) if grad_norm_term else (3.0, 0.25)
    assert rates.shape[-1] == len(expected)
    for term, value in enumerate(expected):
        torch.testing.assert_close(rates[..., term], torch.full_like(rates[..., term], value))


def test_reading_with_known_entries_kept_moves_only_the_erased_ones():
    """read_known=False: a query's known bits come back unchanged, its erased bits are read as usual
    (the meta-loss still trains every parameter); under bit flips (no entry known) every bit moves."""
    model, task = small_model(read_known=False)
    batch = episodes(task)
    known = batch.queries != task.spec.fill_value
    out = model.read(model.write(batch.patterns), batch.queries)
    assert torch.equal(out[known], batch.queries[known])
    assert not torch.equal(out[~known], batch.queries[~known])
    loss, _ = model.meta_loss(batch.patterns, batch.queries)
    loss.backward()
    assert model.read_step.grad.abs() > 0 and model.energy.memory.weight.grad.abs().sum() > 0
    flips = BinaryTask(4, erased=0, flip=0.0625)
    model, _ = small_model(read_known=False)
    model.spec = flips.spec
    noisy = episodes(flips)
    out = model.read(model.write(noisy.patterns), noisy.queries)
    assert not torch.equal(out[noisy.queries != 0.5], noisy.queries[noisy.queries != 0.5])


@pytest.mark.parametrize("grad_norm_term", [False, True])
def test_write_and_read_under_no_grad_match_grad_mode(grad_norm_term: bool):
    """Evaluation runs under no_grad: the closed-form path (the ||grad_x E||^2 term's too) builds no graph
    and gives the retrievals of grad mode."""
    model, task = small_model(grad_norm_term=grad_norm_term)
    batch = episodes(task)
    patterns, queries = batch.patterns, batch.queries
    expected = model.read(model.write(patterns), queries)
    with torch.no_grad():
        state = model.write(patterns)
        retrieved = model.read(state, queries)
    assert all(t.grad_fn is None for t in state.values())
    torch.testing.assert_close(retrieved, expected, rtol=0, atol=0)
