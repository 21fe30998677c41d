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
    with pytest.raises(MembenchError, match="exceeds the 30 images of the test split of omniglot in .*; give a smaller "
                                            "--num-patterns"):
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


# --- corruptions beyond the block: random pixel mask and Gaussian noise ---------------------

def block_sample_before_corruptions(task, batch_size: int, generator: torch.Generator):
    """ImageTask.sample as it was before masks and noise existed (a copy), to pin the block task's episodes."""
    patterns = task.dataset.split("test").images(task.sample_indices(batch_size, generator, "test"))
    return patterns, patterns.masked_fill(task.block_mask(batch_size, generator), task.spec.fill_value)


@pytest.mark.parametrize("task_class", [OmniglotTask, Cifar10Task])
def test_block_task_config_and_episodes_unchanged(data_root, task_class):
    task = task_class(num_patterns=8)
    assert list(task.config()) == ["kind", "num_patterns", "image_size", "block", "data"]  # run ids as before
    assert task.corruption == "block" and task.spec.clamp_known
    new, old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):
        ours, (patterns, queries) = task.sample(3, new), block_sample_before_corruptions(task, 3, old)
        assert torch.equal(ours.patterns, patterns) and torch.equal(ours.queries, queries)
    assert torch.equal(new.get_state(), old.get_state())


@pytest.mark.parametrize("task_class, channels", [(OmniglotTask, 1), (Cifar10Task, 3)])
@pytest.mark.parametrize("mask, image_size", [(0.5, 32), (0.3, 32), (1.0, 16), (0.01, 16)])
def test_mask_sets_that_many_pixel_positions_in_every_channel(data_root, task_class, channels, mask, image_size):
    task = task_class(num_patterns=8, image_size=image_size, block=0, mask=mask)
    assert task.spec.clamp_known and task.config()["mask"] == mask and "noise" not in task.config()
    episodes = task.sample(6, torch.Generator().manual_seed(2))
    masked = episodes.queries == 0.5
    assert (masked == masked[:, :, :1]).all()                                  # same positions in every channel
    assert (masked[:, :, 0].sum((-1, -2)) == round(mask * image_size**2)).all()  # exactly that many per query
    assert torch.equal(episodes.queries[~masked], episodes.patterns[~masked])  # the rest is the image's own
    if mask < 1:
        assert not (masked == masked[:1, :1]).all()                            # positions differ between queries
    again = task.sample(6, torch.Generator().manual_seed(2))
    assert torch.equal(again.queries, episodes.queries) and torch.equal(again.patterns, episodes.patterns)


@pytest.mark.parametrize("task_class", [OmniglotTask, Cifar10Task])
def test_noise_perturbs_every_value_within_unit_range(data_root, task_class):
    task = task_class(num_patterns=16, block=0, noise=0.2)
    assert not task.spec.clamp_known                                           # every entry may be wrong
    episodes = task.sample(16, torch.Generator().manual_seed(4))
    queries, patterns = episodes.queries, episodes.patterns
    assert 0 <= queries.min() and queries.max() <= 1 and not (queries == 0.5).any()
    moved = (queries - patterns).abs()
    if task_class is Cifar10Task:
        assert (moved > 0).float().mean() > 0.95                               # all but the clipped values change
        # away from 0 and 1, clipping never shrinks a move below 0.4: P(|move| > 0.2) = P(|N(0, 0.2²)| > 0.2)
        middle = (patterns >= 0.4) & (patterns <= 0.6)
        assert abs((moved[middle] > 0.2).float().mean() - 0.3173) < 0.01
        assert abs((queries - patterns)[middle].mean()) < 0.005               # unbiased there
    else:  # binary images: a value moves unless the noise pushes it out of [0, 1], half of them
        assert abs((moved > 0).float().mean() - 0.5) < 0.02
        assert abs((moved > 0.2).float().mean() - 0.1587) < 0.01              # P(N(0, 0.2²) > 0.2)
    assert task.errors(queries, patterns).mean() > 0
    again = task.sample(16, torch.Generator().manual_seed(4))
    assert torch.equal(again.queries, queries) and torch.equal(again.patterns, patterns)
    assert not torch.equal(task.sample(16, torch.Generator().manual_seed(5)).queries, queries)


def test_noise_never_lands_on_the_fill_value(data_root, monkeypatch):
    task = OmniglotTask(num_patterns=2, block=0, noise=0.2)
    patterns = torch.tensor([0.0, 1.0, 0.0, 1.0])
    monkeypatch.setattr(torch, "randn", lambda shape, generator: torch.tensor([2.5, -2.5, 1.0, -1.0]))
    noisy = task.add_noise(patterns, torch.Generator())
    assert (0.2 * torch.tensor(2.5) == 0.5).item()                             # the raw sums are exactly 0.5
    assert noisy[0] < 0.5 < noisy[1] and (noisy[:2] - 0.5).abs().max() < 1e-7  # moved one step towards the image
    assert torch.equal(noisy[2:], torch.tensor([0.2, 0.8]))


def test_corrupted_configs_round_trip(data_root):
    for extra in ({"block": 0, "noise": 0.2}, {"block": 0, "mask": 0.5}):
        task = make_task({"kind": "cifar10", "num_patterns": 8, **extra})
        config = task.config()
        assert config == {"kind": "cifar10", "num_patterns": 8, "image_size": 32, **extra,
                          "data": "cifar-10-batches-py (train 70, test 70)"}
        assert make_task(json.loads(json.dumps(config))).config() == config
        assert task.with_num_patterns(4).config() == {**config, "num_patterns": 4}


@pytest.mark.parametrize("kwargs, message", [
    ({"block": 0, "noise": -0.1}, "noise=-0.1 must be a standard deviation"),
    ({"block": 0, "noise": float("nan")}, "noise=nan must be"), ({"block": 0, "noise": float("inf")}, "noise=inf"),
    ({"block": 0, "noise": True}, "noise=True"), ({"block": 0, "noise": "0.2"}, "noise='0.2'"),
    ({"block": 0, "mask": 1.5}, r"mask=1.5 must be a fraction in \(0, 1\]"), ({"block": 0, "mask": -0.5}, "mask=-0.5"),
    ({"block": 0, "mask": 0.0001}, "masks at least one"), ({"block": 0, "mask": "half"}, "mask='half'"),
    ({"noise": 0.2}, "give exactly one corruption"),                        # block defaults to 16
    ({"block": 0, "noise": 0.2, "mask": 0.5}, "give exactly one corruption"),
    ({"block": 0}, "give exactly one corruption"),
    ({"block": 33}, r"block=33 must lie in \[0, image_size=32\]"), ({"block": 2.5}, "block=2.5"),
])
def test_bad_corruptions_are_refused(data_root, kwargs, message):
    with pytest.raises(MembenchError, match=message):
        Cifar10Task(num_patterns=4, **kwargs)
