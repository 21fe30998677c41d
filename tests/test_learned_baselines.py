"""What the learned baselines with a pluggable codec share: the encoder and decoder given are the ones trained."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.dnc import DNC
from baselines.mann import MANN
from baselines.plasticity import DifferentiablePlasticity, PlasticityConfig
from membench.tasks import BinaryTask

FEATURES = 24  # the codec's feature width in these tests


@pytest.mark.parametrize("build", [
    pytest.param(lambda spec, encoder, decoder: MANN(spec, encoder=encoder, decoder=decoder, feature_size=FEATURES),
                 id="mann"),
    pytest.param(lambda spec, encoder, decoder: DNC(spec, encoder=encoder, decoder=decoder, feature_size=FEATURES),
                 id="dnc"),
    pytest.param(lambda spec, encoder, decoder: DifferentiablePlasticity(
        spec, PlasticityConfig(plastic_size=FEATURES), encoder=encoder, decoder=decoder), id="plasticity"),
])
def test_the_encoder_and_decoder_given_replace_the_models_own_and_are_trained(build):
    task = BinaryTask(4)
    encoder = nn.Sequential(nn.Flatten(2), nn.Linear(128, FEATURES))
    decoder = nn.Linear(FEATURES, 128)
    model = build(task.spec, encoder, decoder)
    episodes = task.sample(2, torch.Generator().manual_seed(3))
    assert model.read(model.write(episodes.patterns), episodes.queries).shape == episodes.queries.shape
    model.meta_loss(episodes.patterns, episodes.queries)[0].backward()  # the modules given are the ones used
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
