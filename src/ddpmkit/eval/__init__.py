"""Sample-quality metrics: generic ones in `metrics`, the 8x8 digits judge in `eval.digits`.

`ddpmkit.eval.digits` is not imported here, so `python -m ddpmkit.eval.digits` runs cleanly.
"""

from .metrics import (
    classifier_two_sample_test,
    copy_rate,
    frechet_distance,
    gaussian_frechet_distance,
    kid,
    mmd_permutation_test,
    mmd_rbf,
    nearest_neighbour_distances,
)

__all__ = [
    "classifier_two_sample_test",
    "copy_rate",
    "frechet_distance",
    "gaussian_frechet_distance",
    "kid",
    "mmd_permutation_test",
    "mmd_rbf",
    "nearest_neighbour_distances",
]
