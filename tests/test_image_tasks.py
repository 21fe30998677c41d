"""Image tasks: episode shapes, the corrupted block, errors, splits, configs."""
from __future__ import annotations

import json

import pytest
import torch

from membench import datasets
from membench.encoders import CodecConfig, Decoder, Encoder
from membench.errors import MembenchError
from membench.image_tasks import Cifar10Task, OmniglotTask
from membench.registry import make_task
from tests.test_datasets import write_fixture_data


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """Fixture data in the published formats, found through $MEMBENCH_DATA."""
    root = write_fixture_data(tmp_path / "data")
    monkeypatch.setattr(datasets, "_data_dir_override", None)
    monkeypatch.setenv("MEMBENCH_DATA", str(root))
    return root


def _identify(images: torch.Tensor, split: datasets.ImageSplit) -> torch.Tensor:
    """Index into `split` of each image (..., C, H, W); -1 where it is not in the split."""
    table = {bytes(split.pixels[i].numpy().tobytes()): i for i in range(len(split))}
    flat = (images * split.scale).round().to(torch.uint8).reshape(-1, *images.shape[-3:])
    return torch.tensor([table.get(bytes(x.numpy().tobytes()), -1) for x in flat]).reshape(images.shape[:-3])


@pytest.mark.parametrize("task_class, channels", [(OmniglotTask, 1), (Cifar10Task, 3)])
def test_shapes_block_and_fill(data_root, task_class, channels):
    task = task_class(num_patterns=16)
    episodes = task.sample(64, torch.Generator().manual_seed(0), split="test")
    assert episodes.patterns.shape == episodes.queries.shape == (64, 16, channels, 32, 32)
    assert episodes.patterns.dtype == torch.float32
    assert not (episodes.patterns == 0.5).any()               # 0.5 marks the block only
    corrupted = episodes.queries == 0.5
    assert (corrupted == corrupted[:, :, :1]).all()          # same block in every channel
    assert torch.equal(episodes.queries[~corrupted], episodes.patterns[~corrupted])
    block = corrupted[:, :, 0]                               # (B, N, H, W)
    rows, cols = block.any(dim=3), block.any(dim=2)
    assert (rows.sum(-1) == 16).all() and (cols.sum(-1) == 16).all() and (block.sum((-1, -2)) == 256).all()
    tops = rows.float().argmax(-1)
    assert ((rows.long().diff(dim=-1) != 0).sum(-1) <= 2).all()  # one contiguous run of rows
    assert tops.min() == 0 and tops.max() == 16              # every position fully inside, edges reached
    if task_class is OmniglotTask:
        assert set(episodes.patterns.unique().tolist()) <= {0.0, 1.0}


def test_errors_on_hand_made_cases(data_root):
    omniglot, cifar = OmniglotTask(num_patterns=2), Cifar10Task(num_patterns=2)
    pattern = torch.zeros(1, 2, 1, 32, 32)
    retrieval = pattern.clone()
    retrieval[0, 0, 0, 0, :3] = 1.0      # 3 wrong pixels
    retrieval[0, 1, 0, 5, 5] = 0.5       # undecided counts as wrong
    retrieval[0, 1, 0, 6, 6] = 0.49      # rounds to the right value
    assert omniglot.errors(retrieval, pattern).tolist() == [[3.0, 1.0]]
    pattern = torch.full((1, 2, 3, 32, 32), 0.2)
    retrieval = pattern.clone()
    retrieval[0, 0, 0, :2, :5] += 0.1    # 10 values off by 0.1
    retrieval[0, 1] = 0.7                # every value off by 0.5
    assert torch.allclose(cifar.errors(retrieval, pattern), torch.tensor([[0.1, 3072 * 0.25]]))


@pytest.mark.parametrize("task_class", [OmniglotTask, Cifar10Task])
def test_splits_are_respected(data_root, task_class):
    task = task_class(num_patterns=16)
    generator = torch.Generator().manual_seed(1)
    for split in ("train", "test"):
        episodes = task.sample(32, generator, split=split)
        own = _identify(episodes.patterns, task.dataset.split(split))
        assert (own >= 0).all(), f"{split} episode holds an image that is not in the {split} split"
        other = _identify(episodes.patterns, task.dataset.split("test" if split == "train" else "train"))
        assert (other < 0).all(), f"{split} episode holds an image of the other split"
        assert all(len(set(row.tolist())) == 16 for row in own), "images repeat within an episode"
    if task_class is OmniglotTask:
        labels = task.dataset.train.labels, task.dataset.test.labels
        assert not set(labels[0].tolist()) & set(labels[1].tolist()), "train and test share a character"


def test_same_generator_same_episodes(data_root):
    task = Cifar10Task(num_patterns=8)
    first = task.sample(4, torch.Generator().manual_seed(3))
    second = task.sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(first.queries, second.queries) and torch.equal(first.patterns, second.patterns)


def test_config_is_json_and_round_trips(data_root):
    task = make_task({"kind": "omniglot", "num_patterns": 16})
    config = task.config()
    assert json.loads(json.dumps(config)) == config
    assert config == {"kind": "omniglot", "num_patterns": 16, "image_size": 32, "block": 16,
                      "data": "images_background_small1.zip+images_background_small2.zip (train 120, test 30)"}
    assert str(data_root) not in json.dumps(config)              # run ids do not depend on the machine
    assert make_task(config).config() == config
    assert task.with_num_patterns(8).config() == {**config, "num_patterns": 8}
    small = make_task({"kind": "cifar10", "num_patterns": 4, "image_size": 16, "block": 8})
    episodes = small.sample(2, torch.Generator().manual_seed(0))
    assert episodes.queries.shape == (2, 4, 3, 16, 16) and ((episodes.queries == 0.5).sum((-1, -2, -3)) == 192).all()


def test_refuses_other_data_and_too_many_patterns(data_root):
    with pytest.raises(MembenchError, match="defined on omniglot data 'images_background.zip"):
        OmniglotTask(num_patterns=4, data="images_background.zip (train 19280, test 13180)")
    with pytest.raises(MembenchError, match="exceeds the 30 images"):
        OmniglotTask(num_patterns=64)


@pytest.mark.parametrize("config", [CodecConfig(image_channels=1), CodecConfig(3, 16, (8, 16), 32)])
def test_shared_encoder_and_decoder_shapes(config):
    encoder, decoder = Encoder(config), Decoder(config)
    images = torch.rand(2, 5, config.image_channels, config.image_size, config.image_size)
    codes = encoder(images)
    assert codes.shape == (2, 5, config.embedding)
    assert torch.allclose(codes.mean(-1), torch.zeros(2, 5), atol=1e-5)    # LayerNorm output
    out = decoder(codes)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(AssertionError, match="encoder expects"):
        encoder(torch.rand(2, config.image_channels, config.image_size + 8, config.image_size + 8))
