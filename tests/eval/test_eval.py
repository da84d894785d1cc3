"""Tests for ddpmkit.eval: metrics against closed forms / brute force, and the digits judge."""

import json

import numpy as np
import pytest

from ddpmkit.errors import UserError
from ddpmkit.eval import digits as dj
from ddpmkit.eval import metrics

# ---------------------------------------------------------------- Fréchet distance


def test_frechet_gaussians_diagonal_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    got = metrics.gaussian_frechet_distance(mu_a, np.diag(va), mu_b, np.diag(vb))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_gaussians_general_2x2_closed_form():
    # For 2x2 M with non-negative eigenvalues: Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)).
    sa = np.array([[2.0, 0.9], [0.9, 1.0]])
    sb = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu_a, mu_b = np.array([1.0, 2.0]), np.array([-1.0, 0.5])
    m = sa @ sb
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert metrics.gaussian_frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-10)


def test_frechet_general_covariance_against_eigen_of_product():
    rng = np.random.default_rng(0)
    la, lb = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sa, sb = la @ la.T + 0.1 * np.eye(5), lb @ lb.T
    # Sa Sb is similar to a PSD matrix: Tr (Sa Sb)^{1/2} = sum sqrt(eigenvalues of Sa Sb).
    tr_sqrt = np.sum(np.sqrt(np.abs(np.linalg.eigvals(sa @ sb))))
    expected = np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    got = metrics.gaussian_frechet_distance(np.zeros(5), sa, np.zeros(5), sb)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_from_samples_and_self():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 3)) * np.array([1.0, 2.0, 0.5])
    b = rng.normal(size=(20000, 3)) * np.array([2.0, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, abs=0.1)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------- MMD, KID, C2ST


def _brute_unbiased_mmd2(a, b, k):
    m, n = len(a), len(b)
    saa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sbb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sab = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return saa + sbb - 2 * sab


def test_mmd_rbf_and_kid_against_brute_force():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.5
    h = 1.3
    rbf = lambda x, y: np.exp(-np.sum((x - y) ** 2) / (2 * h * h))  # noqa: E731
    assert metrics.mmd_rbf(a, b, bandwidth=h) == pytest.approx(_brute_unbiased_mmd2(a, b, rbf), rel=1e-10)
    poly = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    assert metrics.kid(a, b) == pytest.approx(_brute_unbiased_mmd2(a, b, poly), rel=1e-10)


def test_mmd_permutation_same_vs_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(150, 4)), rng.normal(size=(120, 4))
    mmd2, p = metrics.mmd_permutation_test(a, b, num_permutations=100, seed=0)
    assert abs(mmd2) < 0.02 and p > 0.01
    mmd2_s, p_s = metrics.mmd_permutation_test(a, b + 0.7, num_permutations=100, seed=0)
    assert mmd2_s > 0.05 and p_s <= 1 / 101 + 1e-12
    # the observed statistic is the plain unbiased MMD^2 with the same bandwidth
    assert mmd2_s == pytest.approx(metrics.mmd_rbf(a, b + 0.7), rel=1e-10)


def test_classifier_two_sample_test():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    acc, p = metrics.classifier_two_sample_test(a, b)
    assert 0.4 < acc < 0.6 and p > 0.01
    acc_s, p_s = metrics.classifier_two_sample_test(a, b + 3.0)
    assert acc_s > 0.9 and p_s < 1e-6


# ---------------------------------------------------------------- nearest neighbours, copies


def test_nearest_neighbour_against_brute_force():
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(37, 6)), rng.normal(size=(23, 6))
    brute = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    d, idx = metrics.nearest_neighbour_distances(q, r, chunk_size=5, return_index=True)
    np.testing.assert_allclose(d, brute.min(1), rtol=1e-12)
    np.testing.assert_array_equal(idx, brute.argmin(1))
    assert np.all(metrics.nearest_neighbour_distances(r[[3, 7]], r) == 0.0)


def test_copy_rate_flags_copies_not_held_out():
    rng = np.random.default_rng(6)
    train, test, fresh = (rng.normal(size=(n, 10)) for n in (400, 200, 300))
    out = metrics.copy_rate(train[:50], train, test)
    assert out["copy_fraction"] == 1.0 and out["exact_copies"] == 50
    assert out["nn_train_median_ratio"] == 0.0
    held = metrics.copy_rate(fresh, train, test)
    assert held["copy_fraction"] < 0.05 and held["exact_copies"] == 0
    assert 0.8 < held["nn_train_median_ratio"] < 1.25


def test_metric_input_errors():
    with pytest.raises(UserError):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(UserError):
        metrics.mmd_rbf(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(UserError):
        metrics.copy_rate(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), quantile=1.5)


# ---------------------------------------------------------------- digits judge


@pytest.fixture(scope="module")
def judge():
    return dj.get_judge(0)


def test_digits_split_reproduces_project_split():
    from sklearn.datasets import load_digits

    split = dj.load_digits_split()
    assert split.train_images.shape == (1437, 8, 8, 1) and split.test_images.shape == (360, 8, 8, 1)
    assert split.train_images.dtype == np.uint8
    raw = load_digits()
    levels = {int(round(v * 255 / 16)) for v in range(17)}
    assert set(np.unique(split.test_images).tolist()) <= levels
    # every image is a distinct row of the raw data, test and train disjoint, classes stratified
    flat = np.round(raw.images.reshape(-1, 64) * 255 / 16).astype(np.uint8)
    rows = {r.tobytes(): i for i, r in enumerate(flat)}
    tr = [rows[x.reshape(64).tobytes()] for x in split.train_images]
    te = [rows[x.reshape(64).tobytes()] for x in split.test_images]
    assert tr == sorted(tr) and not set(tr) & set(te)
    np.testing.assert_array_equal(np.bincount(split.test_labels), np.bincount(raw.target[te]))
    assert np.abs(np.bincount(split.test_labels) - 36).max() <= 1
    try:  # agree with the project's own loader when it exists
        from ddpmkit.data.digits import load_digits as project_load
    except ImportError:
        return
    for name, imgs, labels in (
        ("train", split.train_images, split.train_labels),
        ("test", split.test_images, split.test_labels),
    ):
        ds = project_load(name)
        np.testing.assert_array_equal(np.asarray(ds.data).transpose(0, 2, 3, 1), imgs)
        np.testing.assert_array_equal(np.asarray(ds.labels), labels)


def test_judge_classifier_accuracy(judge):
    split = judge.split
    acc = np.mean(judge.classify(split.test_images) == split.test_labels)
    assert acc >= 0.95 and acc == pytest.approx(judge.test_accuracy)
    assert np.mean(judge.classify_mlp(split.test_images) == split.test_labels) >= 0.95
    f = judge.features(split.test_images[:7])
    assert f.shape == (7, dj.MLP_HIDDEN) and np.all(f >= 0)


def test_real_digits_score_well(judge):
    s = judge.split
    r = dj.evaluate_digit_samples(s.test_images, s.test_labels, reference="train", judge=judge, num_permutations=50)
    json.dumps(r, allow_nan=False)
    assert r["accuracy"] >= 0.95 and all(r[f"accuracy_class_{k}"] >= 0.85 for k in range(10))
    assert sum(r[f"pred_count_{k}"] for k in range(10)) == 360
    assert r["fd_features"] < 2.0 and r["mmd_p_value_features"] > 0.05
    assert r["copy_fraction"] < 0.05 and r["exact_copies"] == 0 and r["sample_duplicates"] == 0


def test_noise_and_repeated_images_score_badly(judge):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(300, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(300) % 10
    r = dj.evaluate_digit_samples(noise, labels, judge=judge, num_permutations=50)
    assert r["accuracy"] < 0.3
    assert r["fd_features"] > 20 * r["fd_features_floor"]
    assert r["mmd_p_value_pixels"] < 0.05 and r["c2st_accuracy_pixels"] > 0.9
    one = np.repeat(judge.split.train_images[:1], 200, axis=0)
    r1 = dj.evaluate_digit_samples(one, None, judge=judge, num_permutations=50)
    assert "accuracy" not in r1
    assert r1["exact_copies"] == 200 and r1["copy_fraction"] == 1.0
    assert r1["sample_duplicates"] == 199 and r1["fd_features"] > 20 * r1["fd_features_floor"]


def test_train_copies_flagged(judge):
    s = judge.split
    r = dj.evaluate_digit_samples(s.train_images[:300], s.train_labels[:300], judge=judge, num_permutations=20)
    assert r["copy_fraction"] == 1.0 and r["exact_copies"] == 300 and r["accuracy"] >= 0.99


def test_digit_input_errors(judge):
    with pytest.raises(UserError):
        dj.evaluate_digit_samples(np.zeros((4, 8, 8, 3), np.uint8), judge=judge)
    with pytest.raises(UserError):
        dj.evaluate_digit_samples(np.zeros((4, 8, 8, 1), np.float32), judge=judge)
    with pytest.raises(UserError):
        dj.evaluate_digit_samples(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2, 10]), judge=judge)
    with pytest.raises(UserError):
        dj.evaluate_digit_samples(np.zeros((4, 8, 8, 1), np.uint8), reference="val", judge=judge)


def test_old_digits_command_line_points_to_eval(capsys):
    import runpy

    with pytest.raises(SystemExit) as stop:
        runpy.run_module("ddpmkit.eval.digits", run_name="__main__")
    assert stop.value.code == 2
    assert "ddpmkit eval SAMPLES.npz --metric digits" in capsys.readouterr().err
