"""Tests for trtq.eval.metrics: each checks the math against a closed form or an independent
implementation, so a wrong constant or formula fails here."""

import json
import math

import numpy as np
import pytest
import torch

from trtq.eval.metrics import FrechetReference, bootstrap_interval, format_interval, weighted_mean
from trtq.eval import (
    conditional_accuracy,
    digits_fid,
    frechet_distance,
    psnr_db,
    ssim,
    summarize,
)


def _images(n=4, c=1, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images in [-1, 1] so SSIM has structure to compare.
    # float64 so the closed-form checks are not limited by float32 rounding of the inputs.
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------- PSNR

@pytest.mark.parametrize("offset", [0.02, 0.1, -0.5])
def test_psnr_constant_offset_closed_form(offset):
    x = _images()
    # An offset c in [-1, 1] units is c/2 in [0, 1] units, so MSE = c^2 / 4.
    expected = 10 * math.log10(1.0 / (offset**2 / 4))
    assert psnr_db(x + offset, x) == pytest.approx(expected, abs=1e-9)


def test_psnr_identical_is_inf_and_pooled_over_set():
    x = _images()
    assert psnr_db(x, x) == math.inf
    # One identical image must not make the pooled PSNR infinite.
    y = x.clone()
    y[1:] += 0.1
    expected = 10 * math.log10(1.0 / ((0.1**2 / 4) * 3 / 4))
    assert psnr_db(y, x) == pytest.approx(expected, abs=1e-6)


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        psnr_db(torch.zeros(2, 1, 32, 32), torch.zeros(3, 1, 32, 32))


# ---------------------------------------------------------------- SSIM

def _ssim_reference(a, b, win=11, sigma=1.5, k1=0.01, k2=0.03):
    """Slow, direct SSIM for one 2-D image pair in [0, 1]: explicit loop over every valid window."""
    r = np.arange(win) - (win - 1) / 2
    wts = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    wts /= wts.sum()
    c1, c2 = k1**2, k2**2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
            ma, mb = (wts * pa).sum(), (wts * pb).sum()
            va = (wts * (pa - ma) ** 2).sum()
            vb = (wts * (pb - mb) ** 2).sum()
            cov = (wts * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2))
                        / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one():
    x = _images()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_slow_reference():
    x = _images(n=2, h=16, w=19, seed=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = (x + 0.3 * noise).clamp(-1, 1)
    a, b = ((x.double() + 1) / 2).numpy(), ((y.double() + 1) / 2).numpy()
    expected = np.mean([_ssim_reference(a[k, 0], b[k, 0]) for k in range(2)])
    assert ssim(y, x) == pytest.approx(expected, abs=1e-6)


def test_ssim_multichannel_is_channel_mean():
    x, y = _images(n=2, c=3, seed=3), _images(n=2, c=3, seed=4)
    per_channel = [ssim(y[:, k:k + 1], x[:, k:k + 1]) for k in range(3)]
    assert ssim(y, x) == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_ssim_decreases_with_noise():
    x = _images(seed=5)
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    scores = [ssim(x + s * noise, x) for s in [0.0, 0.01, 0.05, 0.1, 0.3, 0.6]]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_ssim_shape_errors():
    with pytest.raises(ValueError):
        ssim(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 31))
    with pytest.raises(ValueError):
        ssim(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))  # smaller than the window


# ---------------------------------------------------------------- Fréchet distance

def _with_exact_stats(n, mean, cov, seed):
    """n samples whose sample mean and (ddof=1) covariance are exactly `mean` and `cov`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    # Whiten so the sample covariance is exactly I, then colour it with chol(cov).
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return torch.from_numpy(z @ np.linalg.cholesky(cov).T + mean)


def test_frechet_diagonal_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a = _with_exact_stats(200, mu_a, np.diag(var_a), seed=0)
    b = _with_exact_stats(300, mu_b, np.diag(var_b), seed=1)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-8)


def test_frechet_same_cov_is_mean_distance():
    # Non-diagonal check: with equal covariances the trace term vanishes exactly.
    m = np.random.default_rng(2).standard_normal((5, 5))
    cov = m @ m.T + 0.5 * np.eye(5)
    mu_a, mu_b = np.zeros(5), np.arange(5.0)
    a = _with_exact_stats(100, mu_a, cov, seed=3)
    b = _with_exact_stats(150, mu_b, cov, seed=4)
    assert frechet_distance(a, b) == pytest.approx(np.sum(mu_b**2), abs=1e-7)


def test_frechet_self_zero_and_symmetric():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(500, 8, generator=g)
    b = torch.randn(400, 8, generator=g) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 0.1


def test_frechet_singular_covariance_is_finite():
    # Fewer samples than dimensions: singular covariances must not crash or return nan.
    g = torch.Generator().manual_seed(8)
    d = frechet_distance(torch.randn(5, 20, generator=g), torch.randn(6, 20, generator=g))
    assert math.isfinite(d)


def test_frechet_errors():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


# ---------------------------------------------------------------- accuracy

def test_conditional_accuracy_hand_made():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert conditional_accuracy(logits, labels) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        conditional_accuracy(logits, labels[:3])


# ---------------------------------------------------------------- digits-FID / summarize

class _FakeClassifier:
    """features = 4x4 average-pooled pixels (D=16 for 16x16 images); logits = first 10 features."""

    def __init__(self):
        self.calls = 0

    def features(self, x):
        assert not torch.is_grad_enabled()
        self.calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    def __call__(self, x):
        return self.features(x)[:, :10]


def test_digits_fid_batched_and_offset():
    clf = _FakeClassifier()
    x = _images(n=50, h=16, w=16, seed=9)
    assert digits_fid(clf, x, x, batch_size=7) == pytest.approx(0.0, abs=1e-8)
    # A constant offset moves every one of the 16 feature means by c and leaves covariances alone.
    c = 0.2
    assert digits_fid(clf, x + c, x, batch_size=7) == pytest.approx(16 * c**2, abs=1e-8)
    assert digits_fid(clf, x + c, x, batch_size=7) == pytest.approx(
        digits_fid(clf, x + c, x, batch_size=256), abs=1e-10)


def test_summarize_keys_and_json():
    clf = _FakeClassifier()
    x = _images(n=20, h=16, w=16, seed=10)
    with torch.no_grad():
        labels = clf(x).argmax(dim=1)
    ref = _images(n=30, h=16, w=16, seed=11)

    same = summarize(x, x, labels, clf, ref, resamples=200)
    assert set(same) == {"psnr_db", "ssim", "fid", "fid_ci", "accuracy", "accuracy_ci", "fid_delta",
                         "fid_delta_ci", "bootstrap"}
    assert same["fid_ci"][0] <= same["fid"] <= same["fid_ci"][1]
    assert same["accuracy_ci"] == [1.0, 1.0]
    assert same["fid_delta"] == 0.0 and same["fid_delta_ci"] == [0.0, 0.0]  # paired: identical sets, same draws
    assert same["psnr_db"] is None  # identical to FP
    assert same["ssim"] == pytest.approx(1.0)
    assert same["accuracy"] == pytest.approx(1.0)
    json.dumps(same, allow_nan=False)

    noisy = summarize(x + 0.05, x, labels, clf, ref, resamples=200)
    assert noisy["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.05**2), abs=1e-6)

    no_fp = summarize(x, None, labels, clf, ref, resamples=200)
    assert no_fp["psnr_db"] is None and no_fp["ssim"] is None and "fid_delta" not in no_fp
    assert math.isfinite(no_fp["fid"])


# ---------------------------------------------------------------- bootstrap intervals

def test_bootstrap_mean_interval_matches_normal_approximation_and_is_seeded():
    hits = (torch.arange(400) % 5 != 0).double()  # accuracy 0.8 over 400 samples
    lo, hi = bootstrap_interval(weighted_mean(hits), 400, resamples=2000, seed=3)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 400)  # binomial normal approximation: 0.039
    assert lo == pytest.approx(0.8 - half, abs=0.01) and hi == pytest.approx(0.8 + half, abs=0.01)
    assert (lo, hi) == bootstrap_interval(weighted_mean(hits), 400, resamples=2000, seed=3)
    assert (lo, hi) != bootstrap_interval(weighted_mean(hits), 400, resamples=2000, seed=4)


def test_bootstrap_counts_are_resamples_with_replacement():
    seen = {}

    def stat(counts):
        seen["c"] = counts
        return counts[:, 0]

    bootstrap_interval(stat, 7, resamples=500)
    c = seen["c"]
    assert c.shape == (500, 7) and torch.all(c.sum(1) == 7) and torch.all(c == c.round())
    assert c[:, 0].mean().item() == pytest.approx(1.0, abs=0.15)  # each sample drawn once on average


def test_bootstrap_center_shifts_median_onto_estimate():
    lo, hi = bootstrap_interval(lambda c: 5.0 + c[:, 0], 10, resamples=300)
    clo, chi = bootstrap_interval(lambda c: 5.0 + c[:, 0], 10, center=2.0, resamples=300)
    assert chi - clo == pytest.approx(hi - lo) and clo == pytest.approx(lo - 4.0)  # median of 5 + Bin(10, .1) is 6
    with pytest.raises(ValueError):
        bootstrap_interval(weighted_mean(torch.ones(1)), 1)


def test_frechet_reference_matches_frechet_distance():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(60, 6, generator=g, dtype=torch.float64)
    b = torch.randn(90, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2
    ref = FrechetReference(b)
    one = ref.distances(a, torch.ones(1, 60, dtype=torch.float64))
    assert one.item() == pytest.approx(frechet_distance(a, b), rel=1e-8)
    # a resample with multiplicities equals the distance of the explicitly repeated rows
    counts = torch.zeros(1, 60, dtype=torch.float64)
    counts[0, :30] = 2.0
    assert ref.distances(a, counts).item() == pytest.approx(frechet_distance(a[:30].repeat(2, 1), b), rel=1e-8)


def test_format_interval():
    assert format_interval(3.8412, [3.1, 4.956]) == "3.84 [3.10, 4.96]"
    assert format_interval(0.98, [0.955, 1.0], ".1%") == "98.0% [95.5%, 100.0%]"
    assert format_interval(None, None) == "—" and format_interval(1.0, None) == "1.00"
