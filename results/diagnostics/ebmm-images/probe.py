"""What a trained image EBMM's (or learned baseline's) write and read do: is the memory used, and is the
write selective?

    python results/diagnostics/ebmm-images/probe.py [RECORD.json ...] [--data-dir DIR]
        (default: every record in runs/; data: ../shared/data beside the checkout)

Works on any Figure 3 record of EBMM, Memory Networks or MANN whose checkpoint is cached or shipped
(results/checkpoints), e.g. those a GPU session carried back (`probe.py results/fig3/runs/fig3-cifar-ebmm-*.json`).
Each model is rebuilt from its record's stored preset (`membench.build.load_trained`), as it was trained, even where
the preset has changed since (as the Memory Networks image presets' `init_scale` did in 9f22d5d).

For each record, on fresh test-split episodes (8, or enough for 64 queries when fewer images are written):
- the read: per read iterate x^(k), the error per image inside the block and outside it (wrong pixels on
  Omniglot, squared error on CIFAR) and how far the block's values moved from the fill value 0.5 (mean
  |x - 0.5|); beside them the query itself (its block at 0.5; on Omniglot that counts as background) and
  the read of theta_bar, the memory with nothing written (what the energy's
  prior alone fills in): the written read's gain over it is what the memory adds; and the read of a memory
  written with N other test images (the unseen ones below, none of the query's episode): the written read's
  gain over that is what the memory holds of the query's own images, beyond what any N images written add;
- the write's selectivity: how much the write lowers the energy of the stored images and of as many other
  test images it never saw, none of them in the episode it wrote (equal drops: the write moves every image's
  energy alike, it stores nothing);
- for EBMM-FC, whose write is a rank-N update in the encoder's embedding space (memory = Linear(embedding
  -> d)): mean cosine similarities of embeddings between different images, of a query to its own image and
  to the others (a write can single out an image only as far as its query's embedding is closer to it),
  and how the write moves the memory units' pre-activations W e + b at the queries: the mean |change|,
  split into the part common to an episode's queries and the rest (the varying part), beside the same at
  queries of the unseen images (any change of W varies across queries, whose embeddings differ, so only a
  varying part larger at the written images' queries than at those is selective), and the share of
  units past |2| (where tanh saturates: a saturated unit passes the read no gradient) before and after;
  with `centre_memory`, how far the centre sits from the stored images' embeddings, and the three reads
  again once it is moved onto the training images' mean (bias compensating; not retrained).
The same cosines of the untrained encoders (quick and gpu widths, seed 0) come first, per data set of the
EBMM records given, and the untrained quick EBMM-FC's pre-activation change by one write at initial write
rates 1e-4 ... 10, plain and centred (option `centre_memory`).

For a learned baseline's record (baseline.py: Memory Networks, MANN), only the read's error inside the
block and outside it, beside the query's, and the same of a read of an all-zero memory (what the
decoder makes of the query with nothing stored; MANN's controller state zeroed too) and of a memory
written with N other test images; for Memory Networks
also how much of each query's attention falls on its own image's slot; for MANN whether its read keys
find their images' write keys, whether the slots hold those keys apart, and its mean write gate.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from membench.checkpoints import default_checkpoint_dir, readable_checkpoint
from membench.datasets import set_data_dir
from membench.registry import make_task
from membench.build import load_trained
from membench.run_spec import RunSpec
from membench.training import INIT_PATTERNS
from baselines.mann import MANN
from baselines.memory_networks import MemoryNetwork
from ebmm.config import IMAGE_PRESETS, build_energy
from ebmm.memory import EBMM

HERE = Path(__file__).resolve().parent
IMAGES = 64  # at least this many queries are read (8 episodes at least), and embeddings compared


def error(x: torch.Tensor, patterns: torch.Tensor, where: torch.Tensor, binary: bool) -> float:
    """Mean error per image counted where `where` is True: wrong pixels (x thresholded at 0.5) when
    `binary`, else squared error. x, patterns, where (B, N, C, H, W)."""
    per_value = ((x > 0.5) != (patterns > 0.5)).float() if binary else (x - patterns).pow(2)
    return (per_value * where).flatten(2).sum(-1).mean().item()


def cosines(encoder: torch.nn.Module, patterns: torch.Tensor, queries: torch.Tensor) -> str:
    """patterns, queries (M, C, H, W), M >= 2 -> mean cosines of their embeddings."""
    with torch.no_grad():
        e, q = F.normalize(encoder(patterns), dim=-1), F.normalize(encoder(queries), dim=-1)
    others = ~torch.eye(len(e), dtype=torch.bool)
    return (f"cos(images) {(e @ e.T)[others].mean():.3f}, cos(query, its image) {(q * e).sum(-1).mean():.3f}, "
            f"cos(query, other images) {(q @ e.T)[others].mean():.3f}")


def unit_shift(model: EBMM, theta_bar: dict[str, torch.Tensor], written: dict[str, torch.Tensor],
               queries: torch.Tensor, unseen: torch.Tensor) -> str:
    """EBMM-FC: how the write moves the memory units' pre-activations W e + b (W (e - c) + b with
    `centre_memory`) at the written images' queries (B, N, C, H, W) and, the control, at queries of images
    the write never saw, `unseen` (B, M, C, H, W)."""
    def change(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> the pre-activations at queries x before and after the write, and their difference: (B, N, d) each."""
        with torch.no_grad():
            codes = model.energy.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])     # (B, N, embedding)
            if model.energy.centre is not None:  # option centre_memory: the memory layer reads e - c
                codes = codes - model.energy.centre
            before, after = ((codes @ w["memory.weight"].transpose(1, 2) + w["memory.bias"].unsqueeze(1))
                             for w in (theta_bar, written))
        return before, after, after - before

    def split(shift: torch.Tensor) -> str:
        common = shift.mean(1, keepdim=True)
        return (f"|change| {shift.abs().mean():.4g} (common {common.abs().mean():.4g}, varying "
                f"{(shift - common).abs().mean():.4g})")

    before, after, shift = change(queries)
    return (f"at the written images' queries {split(shift)}, at unseen images' queries {split(change(unseen)[2])}; "
            f"beyond |2|: {(before.abs() > 2).float().mean():.2f} before, {(after.abs() > 2).float().mean():.2f} after")


def stored_and_unseen(task, episodes: int, seed: int):
    """Test-split episodes (Episodes: patterns, queries (B, N, C, H, W)) and, per episode, N other test images
    (patterns and queries, (B, N, C, H, W) each) none of which it holds: one draw of 2N distinct images an
    episode, whose first N are exactly `task.sample(episodes, seed)`'s (the indices are the top N of the
    same random numbers), so the episodes are those of the probe's earlier outputs."""
    batch = task.sample(episodes, torch.Generator().manual_seed(seed), split="test")
    doubled = make_task({**task.config(), "num_patterns": 2 * task.spec.num_patterns})
    both = doubled.sample(episodes, torch.Generator().manual_seed(seed), split="test")
    n = task.spec.num_patterns
    assert torch.equal(both.patterns[:, :n], batch.patterns), "the doubled draw's first N are not the episodes'"
    return batch, both.patterns[:, n:], both.queries[:, n:]


def training_images(task) -> torch.Tensor:
    """Train-split episodes' patterns (B, N, C, H, W), at least INIT_PATTERNS images in all: as many as the
    trainer's `initialise` sees (from another stream)."""
    count = -(-INIT_PATTERNS // task.spec.num_patterns)
    return task.sample(count, torch.Generator().manual_seed(3), split="train").patterns


def untrained_write_scale(task) -> None:
    """The untrained quick EBMM-FC (d = 16, seed 0), plain and with `centre_memory` (centred on 512
    training images): one write of 64 test images at initial write rates 1e-4 ... 10."""
    batch, _, unseen = stored_and_unseen(task, 2, seed=1)
    training = training_images(task)
    for rate in (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 10.0):
        for centre in (False, True):
            torch.manual_seed(0)
            config = dataclasses.replace(IMAGE_PRESETS["resnet_fc"]["quick"].model, memory_size=16,
                                         write_lr_init=rate, centre_memory=centre)
            model = EBMM(task.spec, build_energy(task.spec, config), config)
            model.initialise(training)
            with torch.enable_grad():
                written = model.write(batch.patterns)
            print(f"  write rate {rate:g}{', centred' if centre else ''}: memory units "
                  f"{unit_shift(model, unwritten_memory(model, 2), written, batch.queries, unseen)}")


def attention(model: MemoryNetwork, slots: torch.Tensor, queries: torch.Tensor) -> str:
    """How Memory Networks' queries (B, N, C, H, W) attend over the slots (B, N, w) of their episode's
    images, query i's own image in slot i."""
    with torch.no_grad():
        weights = model.attention(slots, model._features(queries))           # (B, N, N)
    own = weights.diagonal(dim1=1, dim2=2)
    found = (weights.argmax(-1) == torch.arange(weights.shape[-1])).float().mean().item()
    return (f"weight on the query's own image {own.mean().item():.3f} (uniform: {1 / weights.shape[-1]:.3f}), "
            f"largest weight {weights.max(-1).values.mean().item():.3f}, own image the largest for {found:.0%} "
            f"of queries, inverse temperature {model.log_scale.exp().item():.2f}")


def off_diagonal(x: torch.Tensor) -> float:
    """Mean of x (B, n, n) over the entries off its diagonal."""
    n = x.shape[-1]
    return ((x.sum((1, 2)) - x.diagonal(dim1=1, dim2=2).sum(1)) / (n * n - n)).mean().item()


def mann_addressing(model: MANN, patterns: torch.Tensor, queries: torch.Tensor) -> str:
    """Whether MANN's memory holds its write keys apart and its queries find them: cosines of each query's
    read key to its own image's write key and to the others', mean cosine between memory slots, mean write
    gate (near 1: keys are added where the last read went, near 0: into the least-used slot), the learned
    sharpness and the queries' largest read weight. patterns, queries (B, N, C, H, W)."""
    with torch.no_grad():
        state, keys, gates = model.write_trace(patterns)                     # (B, N, W), (B, N)
        read_keys, _ = model.query_keys(state, model.encoder(queries))       # (B, N, W)
        cos = F.normalize(read_keys, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)       # (B, N, N)
        slots = F.normalize(state.memory, dim=-1) @ F.normalize(state.memory, dim=-1).transpose(1, 2)
        weights = model._address(read_keys, state.memory)                    # (B, N, slots)
    found = (cos.argmax(-1) == torch.arange(cos.shape[-1])).float().mean().item()
    return (f"cos(read key, own write key) {cos.diagonal(dim1=1, dim2=2).mean().item():.3f}, to the others "
            f"{off_diagonal(cos):.3f}, own the closest for {found:.0%}; cos between slots {off_diagonal(slots):.3f}; "
            f"write gate {gates.mean().item():.3f}; sharpness {model.log_sharpness.exp().item():.2f}, "
            f"largest read weight {weights.max(-1).values.mean().item():.3f} (uniform: {1 / weights.shape[-1]:.3f})")


def centre_offset(model: EBMM, task, batch, unseen: torch.Tensor, block: torch.Tensor) -> list[str]:
    """EBMM-FC with `centre_memory`: how far the centre c sits from the stored images' embeddings (the write's
    step on W follows e - c, so a common offset makes it common to every query), and the reads (theta_bar's,
    of N other images' memory, of the episode's own) once c is moved onto the mean embedding of training
    images with the bias compensating (`track_centre` at share 1: theta_bar's energies unchanged), not
    retrained."""
    with torch.no_grad():
        centred = model.energy.encoder(batch.patterns.flatten(0, 1)[:IMAGES]) - model.energy.centre
    offset = centred.mean(0)
    lines = [f"  centre: |mean(e - c)| {offset.norm():.3f} over the stored images, their spread about that mean "
             f"{(centred - offset).norm(dim=-1).mean():.3f}"]
    training = training_images(task).flatten(0, 1)
    moved = copy.deepcopy(model)
    moved.energy.track_centre(training, 1.0)
    with torch.enable_grad():
        reads = [moved._read(state, batch.queries, create_graph=False)[-1] for state in (
            unwritten_memory(moved, len(batch.patterns)), moved.write(unseen), moved.write(batch.patterns))]
    binary = task.spec.binary
    theta_bar, others, own = (error(x, batch.patterns, block, binary) for x in reads)
    lines.append(f"  re-centred on {len(training)} training images, not retrained: theta_bar "
                 f"{theta_bar:.2f}, a memory of N other images {others:.2f}, the written read {own:.2f} in the block")
    return lines


def unwritten_memory(model: torch.nn.Module, episodes: int) -> dict[str, torch.Tensor]:
    """EBMM's meta-learned theta_bar as the state of `episodes` episodes with nothing written:
    name -> (episodes, *shape), what `write` starts from."""
    params = dict(model.energy.named_parameters())
    return {n: params[n].detach().expand(episodes, *params[n].shape) for n in model.writable_names}


def probe_baseline(name: str, record: dict, model: torch.nn.Module, batch, unseen: torch.Tensor,
                   block: torch.Tensor, binary: bool) -> None:
    """A learned baseline's read (Memory Networks, MANN) on the probe's episodes `batch`, with its block mask
    (B, N, C, H, W): the errors inside and outside the block, and those of an all-zero memory's read and of
    the read of a memory written with `unseen` (B, N, C, H, W), other test images than the episode's."""
    print(f"{name} {record['model']} {record['options']} (recorded error {record['mean_error']:.2f})")
    print(f"  the query: {error(batch.queries, batch.patterns, block, binary):.2f} in the block")
    with torch.no_grad():
        state = model.write(batch.patterns)
        reads = {"the read": model.read(state, batch.queries)}
        # all zero: a memory with nothing in it (Memory Networks' slots; MANN's slots and controller state)
        empty = (torch.zeros_like(state) if isinstance(state, torch.Tensor) else dataclasses.replace(
            state, **{f.name: torch.zeros_like(getattr(state, f.name)) for f in dataclasses.fields(state)}))
        reads["the read of an all-zero memory"] = model.read(empty, batch.queries)
        # N other images written: the read's gain over it is what is held of the query's own images
        reads["the read of a memory of N other images"] = model.read(model.write(unseen), batch.queries)
    for label, read in reads.items():
        print(f"  {label}: {error(read, batch.patterns, block, binary):.2f} in the block, "
              f"{error(read, batch.patterns, ~block, binary):.2f} outside")
    if isinstance(model, MemoryNetwork):
        print(f"  attention: {attention(model, state, batch.queries)}")
    if isinstance(model, MANN):
        print(f"  addressing: {mann_addressing(model, batch.patterns, batch.queries)}")


def probe(path: Path, record: dict) -> None:
    spec = RunSpec(**{k: record[k] for k in ("suite", "model", "task", "budget", "seed", "queries", "preset",
                                              "options")})
    task, model, checkpoint = load_trained(spec, default_checkpoint_dir(), preset_config=record.get("preset_config"))
    if checkpoint is None:
        print(f"{path.name}: no checkpoint in the cache; skipped")
        return
    if (steps := readable_checkpoint(checkpoint)["step"]) != record["training"]["steps"]:
        print(f"{path.name}: the cached checkpoint has {steps} updates, the record's model "
              f"{record['training']['steps']}; skipped (probe the record of that checkpoint, or train this one again)")
        return
    episodes = max(8, -(-IMAGES // task.spec.num_patterns))
    batch, unseen, unseen_queries = stored_and_unseen(task, episodes, seed=1)
    block = batch.queries == task.spec.fill_value                            # (B, N, C, H, W)
    binary = task.spec.binary
    if not isinstance(model, EBMM):
        probe_baseline(path.name, record, model, batch, unseen, block, binary)
        return
    theta_bar = unwritten_memory(model, episodes)
    with torch.enable_grad():
        written = model.write(batch.patterns)
        iterates = model._read(written, batch.queries, create_graph=False)
        unwritten = model._read(theta_bar, batch.queries, create_graph=False)[-1]
        others = model._read(model.write(unseen), batch.queries, create_graph=False)[-1]  # N other images
    with torch.no_grad():
        drop = {name: (model.batched_energy(written, x) - model.batched_energy(theta_bar, x)).mean().item()
                for name, x in (("stored", batch.patterns), ("unseen", unseen))}
    print(f"{path.name} {record['options']} (recorded error {record['mean_error']:.2f})")
    print(f"  the query: {error(batch.queries, batch.patterns, block, binary):.2f} in the block; read with "
          f"nothing written (theta_bar): {error(unwritten, batch.patterns, block, binary):.2f}; read with "
          f"a memory of N other images: {error(others, batch.patterns, block, binary):.2f}")
    for k, x in enumerate(iterates, 1):
        moved = ((x - 0.5).abs() * block).sum().item() / block.sum().item()
        print(f"  x^({k}): {error(x, batch.patterns, block, binary):6.2f} in the block, "
              f"{error(x, batch.patterns, ~block, binary):5.2f} outside; block moved {moved:.3f} from 0.5")
    print(f"  energy change by the write: stored images {drop['stored']:+.4f}, unseen images {drop['unseen']:+.4f}")
    if hasattr(model.energy, "encoder"):
        first = lambda x: x.flatten(0, 1)[:IMAGES]  # noqa: E731  (the first episodes' images)
        print(f"  embeddings: {cosines(model.energy.encoder, first(batch.patterns), first(batch.queries))}")
        print(f"  memory units: {unit_shift(model, theta_bar, written, batch.queries, unseen_queries)}")
        if getattr(model.energy, "centre", None) is not None:
            print("\n".join(centre_offset(model, task, batch, unseen, block)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="*", type=Path)
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2].parent / "shared" / "data")
    args = parser.parse_args()
    set_data_dir(args.data_dir)
    paths = args.records or sorted((HERE / "runs").glob("fig3-*.json"))
    records = [json.loads(path.read_text()) for path in paths]
    for kind in sorted({record["task"]["kind"] for record in records if record["model"] == "ebmm"}):
        task = make_task({"kind": kind, "num_patterns": 64, "image_size": 32, "block": 16})
        batch = task.sample(1, torch.Generator().manual_seed(1), split="test")
        for preset in ("quick", "gpu"):
            torch.manual_seed(0)
            encoder = build_energy(task.spec, IMAGE_PRESETS["resnet_fc"][preset].model).encoder
            print(f"{kind}, untrained EBMM-FC encoder, {preset} widths: "
                  f"{cosines(encoder, batch.patterns[0], batch.queries[0])}")
        print(f"{kind}, untrained quick EBMM-FC, one write of 64 images:")
        untrained_write_scale(task)
    for path, record in zip(paths, records):
        probe(path, record)


if __name__ == "__main__":
    main()
