"""The one argument validator and the one sampling-options object: each rule, and options= equal to the keywords."""

import math

import pytest
import torch

from ddpmkit import GaussianDiffusion, UserError, linear_beta_schedule
from ddpmkit.sampling_options import SamplingOptions
from ddpmkit.validate import SEED_MAX, check_guidance, check_seed, int_in_range, number_in_range, positive_int


def test_integers_refuse_bools_floats_and_values_out_of_range():
    assert positive_int("n", 3) == 3
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(UserError, match="n must be a positive integer"):
            positive_int("n", bad)
    assert int_in_range("k", 2, 2, 5) == 2
    with pytest.raises(UserError, match=r"k must be an integer in \[2, 5\], got 6"):
        int_in_range("k", 6, 2, 5)
    with pytest.raises(UserError, match="frames must be an integer >= 2, got 1"):
        int_in_range("frames", 1, 2)


def test_one_seed_rule_seed_plus_num_fits_in_int64():
    assert check_seed(0, 5) == 0
    assert check_seed(SEED_MAX - 5, 5) == SEED_MAX - 5
    for bad, num in ((SEED_MAX - 4, 5), (-1, 1), (True, 1), (1.0, 1)):
        with pytest.raises(UserError, match=r"seed must be an integer in \[0, 2\*\*63 - 1 - num\]"):
            check_seed(bad, num)


def test_numbers_in_a_range_and_guidance_refuse_nan_and_bools():
    assert number_in_range("eta", 0.5, 0, 1) == 0.5
    for bad in (math.nan, -0.1, 1.5, True, "0.5"):
        with pytest.raises(UserError, match=r"eta must be a number in \[0, 1\]"):
            number_in_range("eta", bad, 0, 1)
    assert check_guidance(0) == 0
    for bad in (math.nan, math.inf, -1.0, False):
        with pytest.raises(UserError, match="guidance must be a number >= 0"):
            check_guidance(bad)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(sampler="euler"), "sampler"),
        (dict(sampler="ddpm", eta=0.5), "eta applies to the ddim sampler only"),
        (dict(sampler="ddim", eta=1.5), r"eta must be a number in \[0, 1\]"),
        (dict(sampler="ddim", order=2), "order applies to the unipc samplers only"),
        (dict(sampler="unipc-bh1", order=4), "order must be 1, 2 or 3"),
        (dict(spacing="cosine"), "spacing"),
    ],
)
def test_sampling_options_are_checked_when_made(kw, words):
    with pytest.raises(UserError, match=words):
        SamplingOptions(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="ddim", steps=7, eta=0.3),
        dict(sampler="unipc-bh2", steps=6, order=3),
        dict(sampler="ddpm", steps=9, spacing="linspace"),
    ],
)
def test_options_object_samples_exactly_as_the_keywords(kw):
    d = GaussianDiffusion(linear_beta_schedule(40))

    def model(x, t):
        return 0.1 * x + 1e-3 * t[:, None].to(x.dtype)

    def draw(**given):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        return d.sample(model, (3, 2), generator=gens, dtype=torch.float64, **given)

    assert torch.equal(draw(**kw), draw(options=SamplingOptions(**kw)))
    with pytest.raises(UserError, match="not both"):
        draw(options=SamplingOptions(**kw), steps=5)
