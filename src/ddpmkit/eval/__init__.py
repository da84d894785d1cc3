"""Sample-quality metrics: generic ones in `metrics`, the 8x8 digits judge in `eval.digits`.

`ddpmkit.eval.digits` (scikit-learn) and `eval.quality` (the Inception network) are not imported here: only the
commands that score samples load them.
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
