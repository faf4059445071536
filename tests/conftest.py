import os

import pytest
import torch

# Two pytest-xdist workers share 2 cores: one torch thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def randomized():
    """``randomized(net, seed=0)``: add 0.2·N(0, 1) (seeded) to every parameter, in place; returns the net.

    The nets zero-initialise their output layer (a fresh EDM denoiser is c_skip·x), so tests that need
    a non-trivial F perturb them first.
    """
    def perturb(net, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        return net

    return perturb
