"""The maths tests' 2-D Gaussian-mixture oracles, on the linear schedule of T = 1000 steps those tests share."""

import pytest
import torch

import ddpmkit
from helpers import gaussian_oracle, mixture_oracle

ABAR = torch.cumprod(1.0 - ddpmkit.linear_beta_schedule(1000), 0)


@pytest.fixture(scope="module")
def mixture():
    return mixture_oracle(ABAR)


@pytest.fixture(scope="module")
def gaussian():
    return gaussian_oracle(ABAR)
