"""EBMM on images: the paper's memory counts (257 d, 1154 d), budgets, and that reading and
meta-training work through the ResNet energies."""
from __future__ import annotations

import pytest
import torch

from ebmm.memory import EBMM
from membench.errors import MembenchError
from membench.budget import check_declared
from membench.errors import OverBudgetError
from membench.interface import TaskSpec

OMNIGLOT = TaskSpec(pattern_shape=(1, 32, 32), num_patterns=64, binary=True)
CIFAR = TaskSpec(pattern_shape=(3, 32, 32), num_patterns=64, binary=False)
TINY = TaskSpec(pattern_shape=(3, 16, 16), num_patterns=4, binary=False)
TINY_FC = dict(energy="resnet_fc", channels=(4, 8, 8), embedding=32, hidden=24, hops=2, readout=16, memory_size=6)
TINY_CONV = dict(energy="resnet_conv", channels=(4, 8), width=16, bottleneck=8, hidden=8, hops=2, readout=16,
                 memory_size=3)


@pytest.mark.parametrize("spec", [OMNIGLOT, CIFAR])
@pytest.mark.parametrize("d", [12, 64])
def test_paper_fc_memory_is_257_d(spec, d):
    model = EBMM.from_spec(spec, 257 * d, "paper", energy="resnet_fc", memory_size=d)
    assert check_declared(model, spec, 257 * d, "ebmm") == 257 * d


@pytest.mark.parametrize("d", [2, 14])
def test_paper_conv_memory_is_1154_d(d):
    model = EBMM.from_spec(CIFAR, 1154 * d, "paper", energy="resnet_conv", memory_size=d)
    assert check_declared(model, CIFAR, 1154 * d, "ebmm") == 1154 * d
    with pytest.raises(OverBudgetError):
        check_declared(model, CIFAR, 1154 * d - 1, "ebmm")


def _gain(layer: torch.nn.Module) -> float:
    """A layer's weight standard deviation times the square root of its fan-in: He's gain (ReLU: sqrt 2)."""
    weight = layer.weight
    return float(weight.std() * (weight[0].numel() ** 0.5))


@pytest.mark.parametrize("energy", ["resnet_fc", "resnet_conv"])
def test_image_energies_start_their_layers_at_the_documented_gains(energy):
    """The FC energy: its shared encoder's ReLU layers at He's gain sqrt 2 (App. D), its gated hops and readout at
    gain 1. The conv energy: every layer at gain 1, its ReLU stem and bottlenecks too (He's gain there learned less
    on the CPU, results/diagnostics/ebmm-conv-init)."""
    torch.manual_seed(0)
    model = EBMM.from_spec(CIFAR, 1154 * 8 if energy == "resnet_conv" else 257 * 32, "gpu", energy=energy,
                           memory_size=8 if energy == "resnet_conv" else 32)
    net = model.energy
    he = [net.encoder.blocks[1].conv1] if energy == "resnet_fc" else []
    unit = [net.gate, net.readout[0]] + ([] if energy == "resnet_fc" else [
        net.stem[1].conv1, net.block1.reduce, net.block1.static, net.block2.memory])
    for layer in he:
        assert _gain(layer) == pytest.approx(2 ** 0.5, rel=0.1), f"{layer} is not at He's ReLU gain"
    for layer in unit:
        assert _gain(layer) == pytest.approx(1.0, rel=0.1), f"{layer} is not at gain 1"


def test_quick_conv_memory_is_578_d_and_state_is_the_writable_convolutions():
    model = EBMM.from_spec(OMNIGLOT, 578 * 6, "quick", energy="resnet_conv", memory_size=6)
    assert model.memory_floats(OMNIGLOT) == 578 * 6
    tiny = EBMM.from_spec(TINY, 10**6, "quick", **TINY_CONV)
    state = tiny.write(torch.rand(2, 4, 3, 16, 16))
    assert set(state) == {"block1.memory.weight", "block1.memory.bias", "block2.memory.weight", "block2.memory.bias"}
    assert sum(t[0].numel() for t in state.values()) == tiny.memory_floats(TINY) == 2 * (9 * 8 * 3 + 3)


def test_unknown_image_energy_is_refused():
    with pytest.raises(MembenchError, match="unknown image energy 'mlp'"):
        EBMM.from_spec(CIFAR, 10**6, "quick", energy="mlp")


@pytest.mark.parametrize("options", [TINY_FC, TINY_CONV], ids=["fc", "conv"])
def test_image_read_lowers_the_energy_and_meta_gradient_reaches_the_encoder(options):
    torch.manual_seed(0)
    model = EBMM.from_spec(TINY, 10**6, "quick", **{**options, "read_step_init": 1e-3, "momentum_init": 0.1})
    patterns = torch.rand(2, 4, 3, 16, 16)
    queries = patterns.clone()
    queries[..., 4:12, 4:12] = 0.5
    with torch.no_grad():
        state = model.write(patterns)
        retrieved = model.read(state, queries)
        before, after = model.batched_energy(state, queries), model.batched_energy(state, retrieved)
    assert retrieved.shape == queries.shape and 0 <= retrieved.min() and retrieved.max() <= 1
    assert (after < before).all(), "gradient reading should lower the energy of every query"
    loss, _ = model.meta_loss(patterns, queries)
    loss.backward()
    first_conv = next(p for n, p in model.energy.named_parameters() if "weight" in n and p.dim() == 4)
    assert torch.isfinite(loss) and first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def _paper_fc_energy(energy, x: torch.Tensor) -> torch.Tensor:
    """App. B.2's recurrence as written: every hop applies static and gate to [e, s], from s_0 = 0."""
    code = energy.encoder(x)
    written, state = energy.memory(code), code.new_zeros(code.shape[0], energy.hidden)
    for _ in range(energy.hops):
        z = torch.cat([code, state], dim=-1)
        candidate = torch.tanh(torch.cat([written, energy.static(z)], dim=-1))
        update = torch.sigmoid(energy.gate(z))
        state = energy.norm(update * candidate + (1 - update) * state)
    return energy.readout(state).squeeze(-1)


def _paper_conv_energy(energy, x: torch.Tensor) -> torch.Tensor:
    """App. B.3's recurrence as written: every hop convolves [f, s], from s_0 = 0."""
    features = energy.block2(energy.block1(energy.stem(x)))
    state = features.new_zeros(features.shape[0], energy.hidden, energy.grid, energy.grid)
    for _ in range(energy.hops):
        z = torch.cat([features, state], dim=1)
        update = torch.sigmoid(energy.gate(z))
        state = update * torch.tanh(energy.candidate(z)) + (1 - update) * state
    return energy.readout(state.flatten(1)).squeeze(-1)


@pytest.mark.parametrize("options, paper", [(TINY_FC, _paper_fc_energy), (TINY_CONV, _paper_conv_energy)],
                         ids=["fc", "conv"])
def test_image_energy_hops_equal_the_papers_recurrence(options, paper):
    """The hop shortcuts (the e / f halves applied once, hop 1 without s, the two layers stacked) change no
    energy and no gradient, with respect to the images or to any parameter (float64)."""
    torch.manual_seed(0)
    energy = EBMM.from_spec(TINY, 10**6, "quick", **{**options, "hops": 3}).energy.double()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    ours, theirs = energy(x), paper(energy, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    params = [x, *energy.parameters()]
    for mine, reference in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params)):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("options", [TINY_FC, TINY_CONV], ids=["fc", "conv"])
def test_centred_memory_reads_its_input_around_the_training_mean_and_holds_the_same_floats(options):
    torch.manual_seed(0)
    centred = EBMM.from_spec(TINY, 10**6, "quick", **options, centre_memory=True)
    assert centred.memory_floats(TINY) == EBMM.from_spec(TINY, 10**6, "quick", **options).memory_floats(TINY)
    images = torch.rand(3, 4, 3, 16, 16)
    centred.initialise(images)
    energy, flat = centred.energy, images.flatten(0, 1)
    with torch.no_grad():
        if options is TINY_FC:
            inputs = [(energy.encoder(flat) - energy.centre, 0)]
        else:
            first = energy.stem(flat)
            inputs = [(torch.relu(block.reduce(x)) - block.centre[:, None, None], (0, 2, 3))
                      for block, x in ((energy.block1, first), (energy.block2, energy.block1(first)))]
    for read, over in inputs:
        torch.testing.assert_close(read.mean(over), torch.zeros(read.shape[1]), atol=1e-5, rtol=0)
    centres = {n: t.clone() for n, t in centred.state_dict().items() if n.endswith("centre")}
    assert len(centres) == (1 if options is TINY_FC else 2)                  # static: saved, not written
    state = centred.write(torch.rand(2, 4, 3, 16, 16))
    assert not any(n.endswith("centre") for n in state)
    assert all(torch.equal(centred.state_dict()[n], t) for n, t in centres.items())


def test_a_centred_memory_is_centred_once_by_training_and_resumes_with_its_learned_centre(data_root, tmp_path):
    from membench.interface import TrainConfig
    from membench.registry import make_task
    from membench.training import meta_train

    task = make_task({"kind": "cifar10", "num_patterns": 4, "image_size": 16, "block": 8})
    config = TrainConfig(steps=2, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=100)

    def fresh():
        torch.manual_seed(0)
        return EBMM.from_spec(task.spec, 10**6, "quick", **TINY_FC, centre_memory=True)

    model = fresh()
    meta_train(model, task, config, tmp_path / "ck.pt", torch.device("cpu"), seed=0, progress=False)
    trained = model.energy.centre.detach().clone()
    assert trained.abs().sum() > 0                                     # initialised from data, then trained
    resumed = fresh()
    meta_train(resumed, task, config, tmp_path / "ck.pt", torch.device("cpu"), seed=0, progress=False)
    assert torch.equal(resumed.energy.centre, trained)                 # loaded, not centred again


def test_centred_fc_energy_is_the_plain_energy_with_the_memory_bias_moved():
    """memory(e - c) = memory(e) - W c: centring changes what the write's gradient step does, not the energies."""
    torch.manual_seed(0)
    centred = EBMM.from_spec(TINY, 10**6, "quick", **TINY_FC, centre_memory=True)
    centred.initialise(torch.rand(2, 4, 3, 16, 16))
    plain = EBMM.from_spec(TINY, 10**6, "quick", **TINY_FC)
    state = {k: v for k, v in centred.state_dict().items() if k != "energy.centre"}
    state["energy.memory.bias"] = state["energy.memory.bias"] - state["energy.memory.weight"] @ centred.energy.centre
    plain.load_state_dict(state)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain.energy(x), centred.energy(x))


def test_tracking_the_centre_moves_it_towards_the_images_and_keeps_every_energy():
    """centre_tracking: c moves the given share of the way to the images' mean embedding, b by W times that move."""
    torch.manual_seed(0)
    model = EBMM.from_spec(TINY, 10**6, "quick", **TINY_FC, centre_memory=True, centre_tracking=0.5)
    model.initialise(torch.rand(2, 4, 3, 16, 16))
    energy, x = model.energy, torch.rand(5, 3, 16, 16)
    images = torch.rand(2, 4, 3, 16, 16) * 0.5  # darker than the initialising ones: another mean embedding
    with torch.no_grad():
        before, centre, target = energy(x), energy.centre.clone(), energy.encoder(images.flatten(0, 1)).mean(0)
        model.after_update(images)
        torch.testing.assert_close(energy(x), before)
    torch.testing.assert_close(energy.centre, centre + 0.5 * (target - centre))
    assert (target - centre).norm() > 0.1 * centre.norm()  # a move the energies would show, uncompensated


def test_training_tracks_the_centre_on_each_updates_stored_images(data_root, tmp_path, monkeypatch):
    from membench.interface import TrainConfig
    from membench.registry import make_task
    from membench.training import meta_train

    task = make_task({"kind": "cifar10", "num_patterns": 4, "image_size": 16, "block": 8})
    config = TrainConfig(steps=3, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=100)
    torch.manual_seed(0)
    model = EBMM.from_spec(task.spec, 10**6, "quick", **TINY_FC, centre_memory=True, centre_tracking=1.0)
    written, track = [], EBMM.after_update

    def recording(self, patterns):
        written.append(patterns.clone())
        track(self, patterns)

    monkeypatch.setattr(EBMM, "after_update", recording)
    meta_train(model, task, config, tmp_path / "ck.pt", torch.device("cpu"), seed=0, progress=False)
    assert [tuple(p.shape) for p in written] == [(2, 4, 3, 16, 16)] * 3  # once an update, its stored images
    assert not torch.equal(written[0], written[1])
    assert all((p == task.spec.fill_value).float().mean() < 0.05 for p in written)  # not queries (a quarter filled)
    with torch.no_grad():                                                 # share 1: the last update's mean
        torch.testing.assert_close(model.energy.centre, model.energy.encoder(written[-1].flatten(0, 1)).mean(0))


def test_a_tracked_centre_resumes_where_an_uninterrupted_run_would_be(data_root, tmp_path):
    from membench.interface import TrainConfig
    from membench.registry import make_task
    from membench.training import meta_train

    task = make_task({"kind": "cifar10", "num_patterns": 4, "image_size": 16, "block": 8})
    trained = []
    for stops in ((3,), (2, 3)):  # straight through, and paused after two updates then resumed in a fresh model
        for steps in stops:
            torch.manual_seed(0)
            model = EBMM.from_spec(task.spec, 10**6, "quick", **TINY_FC, centre_memory=True, centre_tracking=0.5)
            config = TrainConfig(steps=steps, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=1)
            meta_train(model, task, config, tmp_path / f"ck{len(stops)}.pt", torch.device("cpu"), seed=0,
                       progress=False)
        trained.append((model.energy.centre.detach().clone(), model.energy.memory.bias.detach().clone()))
    assert all(torch.equal(a, b) for a, b in zip(*trained))


@pytest.mark.parametrize("options, message", [
    (dict(TINY_FC, centre_tracking=0.1), "centre_memory=true, which is off; add --option centre_memory=true"),
    (dict(TINY_CONV, centre_memory=True, centre_tracking=0.1), "applies to the resnet_fc energy only, not resnet_conv"),
    (dict(TINY_FC, centre_memory=True, centre_tracking=1.5), r"centre_tracking=1.5 must lie in \[0, 1\]")])
def test_centre_tracking_is_refused_where_it_has_no_centre_or_a_bad_share(options, message):
    with pytest.raises(MembenchError, match=message):
        EBMM.from_spec(TINY, 10**6, "quick", **options)


def test_centred_memory_is_refused_for_the_binary_energy():
    spec = TaskSpec(pattern_shape=(128,), num_patterns=16, binary=True)
    with pytest.raises(MembenchError, match="centre_memory=True applies to the image energies"):
        EBMM.from_spec(spec, 8256, "quick", centre_memory=True)


@pytest.mark.parametrize("options, shifts", [(TINY_FC, (50.0, 100.0)), (TINY_CONV, (-50.0, -100.0))],
                         ids=["fc-tanh", "conv-relu"])
def test_linear_memory_units_do_not_saturate_or_die_where_nonlinear_ones_do(options, shifts):
    """Memory units driven far past tanh's range (FC) or below the ReLU's zero (conv) still move the energy
    when they are linear (ours), not otherwise."""
    x = torch.rand(3, 3, 16, 16)
    moved = {}
    for linear in (False, True):
        torch.manual_seed(0)
        energy = EBMM.from_spec(TINY, 10**6, "quick", **options, linear_memory=linear).energy
        biases = [param for name, param in energy.named_parameters()
                  if name in energy.writable_names and name.endswith("bias")]
        with torch.no_grad():
            energies = []
            for shift in shifts:
                for bias in biases:
                    bias.fill_(shift)
                energies.append(energy(x))
        moved[linear] = (energies[1] - energies[0]).abs().max().item()
    assert moved[False] < 1e-6 < 1e-3 < moved[True]


@pytest.mark.parametrize("options", [TINY_FC, TINY_CONV], ids=["resnet_fc", "resnet_conv"])
def test_image_energies_meta_train_in_bf16_close_to_float32(options):
    """bf16 meta-training (which GPU sessions time for Figure 3's EBMM points): the image energies' updates,
    second-order through the write, run under autocast with finite losses close to float32's, and leave
    float32 weights."""
    from membench.interface import TrainConfig
    from membench.stepper import Stepper

    patterns = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    queries = patterns.clone()
    queries[..., 4:12, 4:12] = 0.5
    losses = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(0)
        model = EBMM.from_spec(TINY, 10**6, "quick", **options)
        stepper = Stepper(model, TrainConfig(lr=1e-3, clip_norm=1.0, precision=precision), torch.device("cpu"))
        outs = [stepper.step(patterns, queries) for _ in range(3)]
        assert all(bool(out.finite) for out in outs), precision
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses[precision] = torch.stack([out.loss for out in outs])
    assert not torch.equal(losses["bf16"], losses["float32"])
    torch.testing.assert_close(losses["bf16"], losses["float32"], rtol=0.02, atol=0.0)


def test_the_layer_norm_has_every_derivative_right_and_torchs_shape():
    """EBMM's meta-gradient through a write with the ||grad_x E||^2 term is a third derivative of the energy:
    membench's LayerNorm passes gradcheck of the gradient of a squared input-gradient (torch's fused one does not,
    in 2.13), with nn.LayerNorm's values and state_dict."""
    from membench.encoders import LayerNorm

    torch.manual_seed(0)
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.add_(torch.randn(6, dtype=torch.float64)), norm.bias.add_(torch.randn(6, dtype=torch.float64))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def writing_gradient(scale):  # d/d scale of ||grad_x E||^2, E = sum(tanh(norm(x * scale)) * c)
        energy = torch.tanh(norm(x * scale)).sum(0) @ torch.linspace(-1, 1, 6, dtype=torch.float64)
        (grad_x,) = torch.autograd.grad(energy, x, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), scale, create_graph=True)[0]

    assert torch.autograd.gradcheck(writing_gradient, (scale,))
    fused = torch.nn.LayerNorm(6).double()
    fused.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), fused(x))


@pytest.mark.parametrize("options", [{**TINY_FC, "grad_norm_term": True}, {**TINY_CONV, "grad_norm_term": True}],
                         ids=["fc", "conv"])
def test_the_image_meta_gradient_is_the_meta_losss_derivative(options):
    """With the gradient-norm writing term (the gpu and paper presets'), backpropagation through the writes and
    reads gives the meta-loss's derivative: central differences agree (float64) for the write rates, the
    writable layer's initial weights and the encoder's or stem's first weights."""
    torch.manual_seed(0)
    model = EBMM.from_spec(TINY, 10**6, "quick", **{**options, "write_steps": 2, "read_steps": 2,
                                                    "write_lr_init": 0.3, "read_step_init": 0.5}).double()
    patterns = torch.rand(2, 4, 3, 16, 16, dtype=torch.float64)
    queries = patterns.clone()
    queries[..., 4:12, 4:12] = 0.5
    loss, _ = model.meta_loss(patterns, queries)
    named = dict(model.named_parameters())
    picked = [name for name in named if "write_lr" in name or name.endswith("memory.weight")][:3] + \
        [next(name for name in named if "weight" in name and named[name].dim() == 4)]
    gradients = torch.autograd.grad(loss, [named[name] for name in picked])
    for name, gradient in zip(picked, gradients):
        flat, index, step = named[name].data.view(-1), 0, 1e-7  # small: no ReLU kink between the two
        kept = flat[index].item()
        flat[index] = kept + step
        higher = model.meta_loss(patterns, queries)[0].item()
        flat[index] = kept - step
        lower = model.meta_loss(patterns, queries)[0].item()
        flat[index] = kept
        assert (higher - lower) / (2 * step) == pytest.approx(gradient.reshape(-1)[index].item(), rel=1e-4, abs=1e-7), name
