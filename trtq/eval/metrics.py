"""Quality metrics for quantized-vs-FP sample sets, with bootstrap intervals.

Images are float tensors [N, C, H, W] in [-1, 1]. Every function takes torch tensors and returns a
plain Python float, and does its arithmetic in float64 on the CPU so results are deterministic and
comparable across runs and machines.

Error bars (`bootstrap_interval`, the one resampler every report uses): 95% percentile intervals from
resampling the generated images with replacement (seeded; the real-digit reference set stays fixed, since
every row is measured against the same one). Quantized and FP images drawn from the same noise are resampled
with the same indices, so the interval of the FID *difference* (`fid_delta_ci`) is a paired one; it is much
tighter than either FID's own interval and is the one to read when asking whether two rows differ.
"""

import math
import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F


def _to_unit(x):
    # Metrics are defined with data range 1, so map [-1, 1] -> [0, 1]. No clamping: a sample that
    # overshoots the range is a real error and should count against it.
    return (x.detach().to("cpu", torch.float64) + 1.0) / 2.0


def _check_same_shape(x, ref):
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(ref.shape)}")


def psnr_db(x, ref):
    """PSNR (dB) of ``x`` against ``ref`` after mapping both to [0, 1] (data range 1).

    The MSE is pooled over the whole set rather than averaging per-image PSNRs, so a single
    identical image cannot make the result infinite. Returns ``math.inf`` only when the whole set
    matches exactly.
    """
    _check_same_shape(x, ref)
    mse = torch.mean((_to_unit(x) - _to_unit(ref)) ** 2).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)


_SSIM_WIN, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_window(size=_SSIM_WIN, sigma=_SSIM_SIGMA):
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)  # separable 2-D Gaussian, sums to 1


def ssim(x, ref):
    """Mean SSIM (Wang et al. 2004) over all valid windows, channels and images.

    11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, data range 1, 'valid' convolution: windows
    never see padding, so border pixels are not biased towards the padding value.
    """
    _check_same_shape(x, ref)
    if x.dim() != 4:
        raise ValueError(f"expected [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(f"images must be at least {_SSIM_WIN}x{_SSIM_WIN}, got {h}x{w}")
    a, b = _to_unit(x), _to_unit(ref)
    # Depthwise conv: each channel gets its own copy of the window, then all channels are averaged
    # together with the windows (equal window count per channel, so this is the channel mean).
    win = _gaussian_window().expand(c, 1, _SSIM_WIN, _SSIM_WIN).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return torch.mean(num / den).item()


def frechet_distance(feat_a, feat_b, eps=1e-6):
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D].

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}), in float64. If the matrix square root
    is not finite (singular product, e.g. fewer samples than dimensions), retry with eps*I added to
    both covariances, as the reference FID code does; a negligible imaginary part from numerical
    error is dropped, a large one is an error.
    """
    a = np.asarray(torch.as_tensor(feat_a).detach().to("cpu", torch.float64))
    b = np.asarray(torch.as_tensor(feat_b).detach().to("cpu", torch.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] features, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("need at least 2 samples in each set to estimate a covariance")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    # np.cov needs 2-D output even for D == 1, hence atleast_2d.
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        covmean = scipy.linalg.sqrtm(s_a @ s_b)
    # A singular product (dead ReLU features, few samples) makes sqrtm warn or return non-finite values.
    if caught or not np.all(np.isfinite(covmean)):
        offset = np.eye(s_a.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part: {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real

    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95


def bootstrap_interval(statistic: Callable[[torch.Tensor], torch.Tensor], n: int, center: float | None = None,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of n samples, resampled with replacement.

    A resample is given to ``statistic`` as its multiplicities: ``statistic(counts)`` takes counts [R, n]
    (float64, each row sums to n: how often each sample was drawn) and returns the R values, so a statistic
    is computed for all resamples at once and paired sample sets (FP and quantized images from the same
    noise) are resampled together simply by using the same counts for both. The draws depend only on the
    seed and n.

    ``center``: the point estimate, for statistics that resampling itself biases. A resample repeats
    images (about 63% are distinct), and FID grows as the effective sample count shrinks, so the raw
    bootstrap distribution of FID lies above the estimate (at 100 digits it may not even contain it). With a
    center, the distribution is shifted so its median sits on the estimate: the interval then brackets it,
    and it stays conservative (checked on real digits: wider than the spread of FID over disjoint subsets).
    """
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 samples, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(resamples, n, dtype=torch.float64))
    values = torch.as_tensor(statistic(counts), dtype=torch.float64).reshape(resamples)
    tail = (1.0 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    if center is not None:
        shift = center - values.median().item()
        lo, hi = lo + shift, hi + shift
    return float(lo), float(hi)


def weighted_mean(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mean of per-sample values as a bootstrap statistic (accuracy: values are 0/1 hits)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    return lambda counts: counts @ v / v.numel()


class FrechetReference:
    """The reference side of a Fréchet distance, precomputed for many evaluations (bootstrap resamples).

    Uses Tr (S_a S_b)^{1/2} = Tr (S_b^{1/2} S_a S_b^{1/2})^{1/2}: a batched symmetric eigenvalue problem
    instead of a general matrix square root per resample (agrees with `frechet_distance` to ~1e-4 on
    digits features).
    """

    def __init__(self, features):
        b = torch.as_tensor(features).detach().to("cpu", torch.float64)
        self.mu = b.mean(0)
        self.cov = torch.cov(b.T).reshape(b.shape[1], b.shape[1])
        w, v = torch.linalg.eigh(self.cov)
        self.cov_sqrt = (v * w.clamp(min=0).sqrt()) @ v.T
        self.trace = self.cov.trace()

    def distances(self, features, counts: torch.Tensor, chunk: int = 250) -> torch.Tensor:
        """Fréchet distance of each weighted resample (counts [R, N]) of ``features`` [N, D] to the reference."""
        a = torch.as_tensor(features).detach().to("cpu", torch.float64)
        n, d = a.shape
        outer = (a[:, :, None] * a[:, None, :]).reshape(n, d * d)  # one GEMM gives every resample's moments
        out = []
        for c in counts.split(chunk):
            mu = c @ a / n                                                   # [r, D]
            second = (c @ outer).reshape(-1, d, d)                           # sum_i c_i a_i a_i^T
            cov = (second - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)  # unbiased, as np.cov
            eig = torch.linalg.eigvalsh(self.cov_sqrt @ cov @ self.cov_sqrt)
            diff = mu - self.mu
            out.append((diff * diff).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + self.trace
                       - 2.0 * eig.clamp(min=0).sqrt().sum(1))
        return torch.cat(out)


def conditional_accuracy(logits, labels):
    """Fraction of samples whose argmax class equals the requested label."""
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("empty sample set")
    pred = logits.detach().cpu().argmax(dim=1)
    return (pred == labels.detach().cpu().long()).double().mean().item()


def _batched(fn, classifier, images, batch_size):
    # Evaluate in batches under no_grad; an nn.Module is put in eval mode (BatchNorm/Dropout would
    # otherwise make features depend on the batch) and its mode is restored afterwards.
    was_training = isinstance(classifier, torch.nn.Module) and classifier.training
    if was_training:
        classifier.eval()
    try:
        with torch.no_grad():
            outs = [fn(images[i:i + batch_size]).detach().cpu()
                    for i in range(0, images.shape[0], batch_size)]
    finally:
        if was_training:
            classifier.train()
    return torch.cat(outs, dim=0)


_FEATURE_CACHE: list[tuple] = []  # (classifier, images, version, batch_size, features), most recent last


def _features(classifier, images, batch_size):
    """Classifier features of a set that every row of a report shares (the real digits, the FP samples),
    remembered for the two most recent such sets: the 1797 real digits cost more than a row's samples.
    The cache holds the objects themselves, so an identity match cannot be a recycled id."""
    for clf, imgs, version, bs, feats in _FEATURE_CACHE:
        if clf is classifier and imgs is images and version == images._version and bs == batch_size:
            return feats
    feats = _batched(classifier.features, classifier, images, batch_size).flatten(1)
    _FEATURE_CACHE.append((classifier, images, images._version, batch_size, feats))
    del _FEATURE_CACHE[:-2]
    return feats


def digits_fid(classifier, images, reference_images, batch_size=256):
    """FID computed in the feature space of a digits classifier (``classifier.features(x) -> [N, D]``)."""
    fa = _batched(classifier.features, classifier, images, batch_size)
    fb = _batched(classifier.features, classifier, reference_images, batch_size)
    return frechet_distance(fa.flatten(1), fb.flatten(1))


def summarize(samples, fp_samples, labels, classifier, reference_images, batch_size=256,
              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """All metrics for one sample set, as a JSON-safe dict.

    - psnr_db, ssim: against ``fp_samples`` drawn from the same noise; None when fp_samples is None.
      psnr_db is also None when the samples are bit-identical to FP (infinite PSNR), so the dict
      stays valid JSON: None there means "identical to FP".
    - fid: digits-FID against ``reference_images`` (real digits); fid_ci its bootstrap interval [lo, hi].
    - accuracy: ``classifier(samples)`` logits vs the requested ``labels``; accuracy_ci its interval.
    - fid_delta, fid_delta_ci: FID minus the FP samples' FID, paired bootstrap (only with fp_samples).
    - bootstrap: resamples, seed and level of the intervals.
    """
    def finite_or_none(v):
        return None if v is None or math.isinf(v) else v

    psnr_v = ssim_v = None
    if fp_samples is not None:
        psnr_v = psnr_db(samples, fp_samples)
        ssim_v = ssim(samples, fp_samples)
    logits = _batched(classifier, classifier, samples, batch_size)
    feats = _batched(classifier.features, classifier, samples, batch_size).flatten(1)
    ref_feats = _features(classifier, reference_images, batch_size)
    fid = frechet_distance(feats, ref_feats)
    ref = FrechetReference(ref_feats)
    hits = (logits.argmax(dim=1) == labels.detach().cpu().long())
    n, boot = feats.shape[0], {"resamples": resamples, "seed": seed}
    fid_lo, fid_hi = bootstrap_interval(lambda c: ref.distances(feats, c), n, center=fid, **boot)
    out = {
        "psnr_db": finite_or_none(psnr_v),
        "ssim": finite_or_none(ssim_v),
        "fid": finite_or_none(fid),
        "fid_ci": [max(fid_lo, 0.0), fid_hi],  # the shift may cross 0; a Fréchet distance cannot
        "accuracy": conditional_accuracy(logits, labels),
        "accuracy_ci": list(bootstrap_interval(weighted_mean(hits), n, **boot)),
    }
    if fp_samples is not None:
        fp_feats = _features(classifier, fp_samples, batch_size)
        delta = fid - frechet_distance(fp_feats, ref_feats)
        out["fid_delta"] = delta
        out["fid_delta_ci"] = list(bootstrap_interval(
            lambda c: ref.distances(feats, c) - ref.distances(fp_feats, c), n, center=delta, **boot))
    out["bootstrap"] = {**boot, "level": BOOTSTRAP_LEVEL}
    return out


def format_interval(value: float | None, interval, spec: str = ".2f") -> str:
    """'3.84 [3.10, 4.95]': how every table prints a figure with its interval."""
    if value is None:
        return "—"
    if not interval:
        return format(value, spec)
    return f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]"
