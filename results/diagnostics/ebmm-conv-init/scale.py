"""The conv energy's scale at its start: gpu preset, CIFAR, d = 8, on 64 training images.

    python results/diagnostics/ebmm-conv-init/scale.py <checkout> [<data dir>, default ../shared/data]

Prints, for two initialisation seeds, the standard deviation of the stem-and-bottlenecks features, of the energies,
and the mean norm of dE/dx per image, for the code of <checkout> (a git worktree of the commit to measure).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, sys.argv[1])
from ebmm.memory import EBMM  # noqa: E402
from membench.datasets import load_cifar10  # noqa: E402
from membench.interface import TaskSpec  # noqa: E402

CIFAR = TaskSpec(pattern_shape=(3, 32, 32), num_patterns=64, binary=False)
data = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data")
images = load_cifar10(data).split("train").images(torch.arange(64))
for seed in (0, 1):
    torch.manual_seed(seed)
    net = EBMM.from_spec(CIFAR, 1154 * 8, "gpu", energy="resnet_conv", memory_size=8).energy
    x = images.clone().requires_grad_(True)
    features = net.block2(net.block1(net.stem(x)))
    energy = net(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    print(f"seed {seed}: features std {features.std():.4f}, energy std {energy.std():.4f}, "
          f"|dE/dx| per image {grad.flatten(1).norm(dim=1).mean():.4f}")
