"""Generic sample-quality metrics over feature arrays [N, D]: Fréchet distance, MMD, KID,
nearest-neighbour copy detection and a classifier two-sample test. All maths in float64."""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np

from ..errors import UserError
from ..validate import positive_int

__all__ = [
    "frechet_distance",
    "gaussian_frechet_distance",
    "mmd_rbf",
    "mmd_permutation_test",
    "kid",
    "kid_with_stderr",
    "nearest_neighbour_distances",
    "precision_recall",
    "trace_sqrt_product",
    "copy_rate",
    "classifier_two_sample_test",
]


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    """Flatten an array [N, ...] to float64 [N, D] and check it is finite and non-empty."""
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[0] == 0:
        raise UserError(f"{name} must be a non-empty array [N, ...], got shape {a.shape}")
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name} contains NaN or infinite values")
    return a


def _pair(a: np.ndarray, b: np.ndarray, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two feature arrays with the same dimension and at least `min_rows` rows each."""
    a, b = _as_2d(a, "first sample"), _as_2d(b, "second sample")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) < min_rows:
        raise UserError(f"each sample needs at least {min_rows} rows, got {len(a)} and {len(b)}")
    return a, b


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root S^{1/2} = V diag(sqrt(max(w, 0))) V^T of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Sa Sb)^{1/2}) of two symmetric PSD matrices, in float64.

    Sa Sb is not symmetric, but Sa^{1/2} Sb Sa^{1/2} is similar to it (same eigenvalues) and
    symmetric PSD, so the trace is the sum of square roots of its eigenvalues: no complex
    parts and no ill-conditioned Schur iteration, unlike scipy.linalg.sqrtm(Sa @ Sb).
    """
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet (2-Wasserstein^2) distance of two Gaussians: |mu_a-mu_b|^2 + Tr(Sa+Sb-2(Sa Sb)^{1/2}).

    This is FID (Heusel et al. 2017) when the Gaussians are fitted to Inception pool features;
    Tr((Sa Sb)^{1/2}) comes from :func:`trace_sqrt_product`.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    tr_cross = trace_sqrt_product(cov_a, cov_b)
    diff = mu_a - mu_b
    value = float(diff @ diff) + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * tr_cross
    return max(value, 0.0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance (FID formula) between Gaussians fitted to two feature sets [N, D]."""
    a, b = _pair(feats_a, feats_b, min_rows=2)
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances |a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.clip(d, 0.0, None)


def _median_bandwidth(pooled: np.ndarray, max_points: int = 1000) -> float:
    """Median heuristic: median pairwise Euclidean distance of (up to max_points of) the pool."""
    pts = pooled[:: max(1, math.ceil(len(pooled) / max_points))]
    d = _sq_dists(pts, pts)[np.triu_indices(len(pts), k=1)]
    med = float(np.sqrt(np.median(d))) if d.size else 0.0
    return med if med > 0 else 1.0


def _rbf_gram(pooled: np.ndarray, bandwidth: float) -> np.ndarray:
    """RBF kernel k(x, y) = exp(-|x-y|^2 / (2 h^2)) over all pairs of the pooled sample."""
    return np.exp(-_sq_dists(pooled, pooled) / (2.0 * bandwidth * bandwidth))


def _unbiased_mmd2_from_gram(k: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each column of boolean `masks` [N, P] (True = first sample).

    MMD_u^2 = sum_{i!=j in A} k/(m(m-1)) + sum_{i!=j in B} k/(n(n-1)) - 2 sum_{A x B} k/(m n),
    with the block sums obtained as quadratic forms w^T K w of the indicator vectors.
    """
    wa = masks.astype(np.float64)
    wb = 1.0 - wa
    m, n = wa.sum(0), wb.sum(0)
    kwa, kwb = k @ wa, k @ wb
    diag = np.diag(k)
    s_aa = (wa * kwa).sum(0) - diag @ wa
    s_bb = (wb * kwb).sum(0) - diag @ wb
    s_ab = (wa * kwb).sum(0)
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2.0 * s_ab / (m * n)


def mmd_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with an RBF kernel; bandwidth=None: median heuristic."""
    a, b = _pair(a, b, min_rows=2)
    pooled = np.concatenate([a, b])
    h = _median_bandwidth(pooled) if bandwidth is None else float(bandwidth)
    if h <= 0:
        raise UserError(f"bandwidth must be positive, got {bandwidth}")
    mask = np.zeros((len(pooled), 1), dtype=bool)
    mask[: len(a)] = True
    return float(_unbiased_mmd2_from_gram(_rbf_gram(pooled, h), mask)[0])


def mmd_permutation_test(
    a: np.ndarray,
    b: np.ndarray,
    num_permutations: int = 200,
    seed: int = 0,
    bandwidth: float | None = None,
) -> tuple[float, float]:
    """RBF MMD^2 and its permutation p-value (1 + #{MMD^2_perm >= MMD^2}) / (1 + P)."""
    a, b = _pair(a, b, min_rows=2)
    positive_int("num_permutations", num_permutations)
    pooled = np.concatenate([a, b])
    h = _median_bandwidth(pooled) if bandwidth is None else float(bandwidth)
    k = _rbf_gram(pooled, h)
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(pooled), num_permutations + 1), dtype=bool)
    masks[: len(a), 0] = True
    for p in range(1, num_permutations + 1):
        masks[rng.permutation(len(pooled))[: len(a)], p] = True
    stats = _unbiased_mmd2_from_gram(k, masks)
    observed = float(stats[0])
    p_value = (1.0 + float(np.sum(stats[1:] >= observed))) / (1.0 + num_permutations)
    return observed, p_value


def kid(a: np.ndarray, b: np.ndarray, subset_size: int | None = None, num_subsets: int = 10, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, k(x,y)=(x.y/D + 1)^3.

    subset_size=None uses the full sets once; otherwise the mean over `num_subsets` random
    subsets of that size drawn without replacement from each set.
    """
    a, b = _pair(a, b, min_rows=2)
    dim = a.shape[1]

    def one(x: np.ndarray, y: np.ndarray) -> float:
        pooled = np.concatenate([x, y])
        k = (pooled @ pooled.T / dim + 1.0) ** 3
        mask = np.zeros((len(pooled), 1), dtype=bool)
        mask[: len(x)] = True
        return float(_unbiased_mmd2_from_gram(k, mask)[0])

    if subset_size is None:
        return one(a, b)
    if not 2 <= subset_size <= min(len(a), len(b)):
        raise UserError(f"subset_size must be in [2, {min(len(a), len(b))}], got {subset_size}")
    rng = np.random.default_rng(seed)
    vals = [
        one(a[rng.choice(len(a), subset_size, replace=False)], b[rng.choice(len(b), subset_size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(vals))


def _mmd2_jackknife(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> tuple[float, float, float]:
    """Unbiased MMD^2 from kernel blocks, and its jackknife variance from each sample's side.

    Leaving out x_i removes its row sums from the within-x and cross sums, so all m + n
    leave-one-out estimates cost O(m + n) once the blocks exist. The two-sample jackknife
    variance is the sum of the two one-sample ones (Arvesen 1969).
    """
    m, n = len(kxx), len(kyy)
    rx, ry = kxx.sum(1) - np.diag(kxx), kyy.sum(1) - np.diag(kyy)
    cx, cy = kxy.sum(1), kxy.sum(0)
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    value = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
    loo_x = (sxx - 2 * rx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) - 2 * (sxy - cx) / ((m - 1) * n)
    loo_y = sxx / (m * (m - 1)) + (syy - 2 * ry) / ((n - 1) * (n - 2)) - 2 * (sxy - cy) / (m * (n - 1))
    var_x = (m - 1) / m * float(((loo_x - loo_x.mean()) ** 2).sum())
    var_y = (n - 1) / n * float(((loo_y - loo_y.mean()) ** 2).sum())
    return float(value), var_x, var_y


def kid_with_stderr(
    a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs") as published, and its standard error.

    KID is the mean of the unbiased MMD^2 with k(x, y) = (x.y/D + 1)^3 over `num_subsets`
    pairs of random subsets of `subset_size` rows (capped at the smaller set), drawn without
    replacement from each set. Given the data, that mean estimates the all-pairs U-statistic
    U_N, so Var = Var(U_N) + Var(subset value | data) / num_subsets: the first term is the
    subsets' mean jackknife variance scaled from subset_size to each set's size (first-order
    U-statistic scaling; conservative when both sets come from one distribution), the second
    the spread of the subset values.
    """
    a, b = _pair(a, b, min_rows=3)
    if num_subsets < 1:
        raise UserError(f"num_subsets must be >= 1, got {num_subsets}")
    if subset_size < 3:
        raise UserError(f"subset_size must be >= 3, got {subset_size}")
    m, dim = min(subset_size, len(a), len(b)), a.shape[1]
    rng = np.random.default_rng(seed)
    values, var_a, var_b = np.empty(num_subsets), np.empty(num_subsets), np.empty(num_subsets)
    for s in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        blocks = [(p @ q.T / dim + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y))]
        values[s], var_a[s], var_b[s] = _mmd2_jackknife(*blocks)
    spread = float(values.var(ddof=1)) / num_subsets if num_subsets > 1 else 0.0
    var_data = float(var_a.mean()) * m / len(a) + float(var_b.mean()) * m / len(b)
    return float(values.mean()), math.sqrt(spread + var_data)


def _kth_neighbour_sq_radii(feats: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (itself excluded)."""
    radii = np.empty(len(feats))
    for start in range(0, len(feats), chunk_size):
        d = _sq_dists(feats[start : start + chunk_size], feats)
        rows = np.arange(len(d))
        d[rows, rows + start] = np.inf
        radii[start : start + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _fraction_inside_balls(queries: np.ndarray, centres: np.ndarray, sq_radii: np.ndarray, chunk_size: int) -> float:
    """Fraction of queries within some centre's ball |q - c|^2 <= r_c^2 (up to float64 rounding)."""
    norms_c = (centres * centres).sum(1)
    inside = 0
    for start in range(0, len(queries), chunk_size):
        q = queries[start : start + chunk_size]
        # The |q|^2 + |c|^2 - 2 q.c expansion loses ~1e-16 of the norms: a point equal to a
        # centre of radius 0 (k duplicates) must still count as inside.
        slack = 1e-12 * ((q * q).sum(1)[:, None] + norms_c[None, :])
        inside += int(np.any(_sq_dists(q, centres) <= sq_radii[None, :] + slack, axis=1).sum())
    return inside / len(queries)


def precision_recall(
    real: np.ndarray, generated: np.ndarray, k: int = 3, chunk_size: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated vs real features.

    Each feature's ball reaches its k-th nearest neighbour within its own set. Precision is
    the fraction of generated features inside some real ball (fidelity), recall the fraction
    of real features inside some generated ball (coverage). Distances are computed in chunks
    of `chunk_size` rows, so memory is O(chunk_size * N).
    """
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    r, g = _pair(real, generated, min_rows=k + 1)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    precision = _fraction_inside_balls(g, r, _kth_neighbour_sq_radii(r, k, chunk_size), chunk_size)
    recall = _fraction_inside_balls(r, g, _kth_neighbour_sq_radii(g, k, chunk_size), chunk_size)
    return precision, recall


@overload
def nearest_neighbour_distances(
    queries: np.ndarray, references: np.ndarray, chunk_size: int = ..., return_index: Literal[False] = ...
) -> np.ndarray: ...


@overload
def nearest_neighbour_distances(
    queries: np.ndarray, references: np.ndarray, chunk_size: int = ..., *, return_index: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...


def nearest_neighbour_distances(
    queries: np.ndarray, references: np.ndarray, chunk_size: int = 1024, return_index: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Euclidean distance min_j |q_i - r_j| from each query to its nearest reference, chunked.

    The nearest index is found with the |q|^2 + |r|^2 - 2 q.r expansion, then the distance is
    recomputed directly from q_i - r_j, so an exact copy gives exactly 0.
    """
    q, r = _pair(queries, references)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    idx = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        idx[start : start + chunk_size] = _sq_dists(q[start : start + chunk_size], r).argmin(1)
    dist = np.sqrt(((q - r[idx]) ** 2).sum(1))
    return (dist, idx) if return_index else dist


def copy_rate(samples: np.ndarray, train: np.ndarray, test: np.ndarray, quantile: float = 0.01) -> dict:
    """Memorisation check: fraction of samples whose nearest-training-image distance is below
    the `quantile` of held-out test-to-train nearest-neighbour distances, plus exact copies."""
    if not 0.0 < quantile < 1.0:
        raise UserError(f"quantile must be in (0, 1), got {quantile}")
    d_samples = nearest_neighbour_distances(samples, train)
    d_test = nearest_neighbour_distances(test, train)
    threshold = float(np.quantile(d_test, quantile))
    med_test = float(np.median(d_test))
    med_samples = float(np.median(d_samples))
    return {
        "copy_threshold": threshold,
        "copy_fraction": float(np.mean(d_samples < threshold)),
        "copy_fraction_test": float(np.mean(d_test < threshold)),
        "exact_copies": int(np.sum(d_samples == 0.0)),
        "nn_train_median": med_samples,
        "nn_train_median_test": med_test,
        "nn_train_median_ratio": med_samples / med_test if med_test > 0 else float("inf"),
    }


def _binomial_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), summed in log space."""
    if k <= 0:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0) for i in range(k, n + 1)
    ]
    top = max(logs)
    return float(min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs)))


def classifier_two_sample_test(
    a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0, neighbours: int = 5
) -> tuple[float, float]:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017) with a k-NN classifier.

    Trains on balanced subsets (min(|a|, |b|) rows each) to tell a from b with stratified
    `folds`-fold cross-validation; returns (held-out accuracy, one-sided binomial p-value
    of that accuracy under the null accuracy 1/2). Accuracy near 0.5: indistinguishable.
    """
    # lazy: scikit-learn costs start-up time to every command that imports the metrics
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    a, b = _pair(a, b, min_rows=folds)
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    x = np.concatenate([a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]])
    y = np.repeat([0, 1], n)
    correct = 0
    for fit_idx, val_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = KNeighborsClassifier(n_neighbors=neighbours).fit(x[fit_idx], y[fit_idx])
        correct += int(np.sum(clf.predict(x[val_idx]) == y[val_idx]))
    return correct / len(x), _binomial_sf(correct, len(x))
