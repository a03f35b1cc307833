"""Quality metrics for quantized-vs-FP sample sets.

Images are float tensors [N, C, H, W] in [-1, 1]. Every function takes torch tensors and returns a
plain Python float, and does its arithmetic in float64 on the CPU so results are deterministic and
comparable across runs and machines.
"""

import math
import warnings

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


def digits_fid(classifier, images, reference_images, batch_size=256):
    """FID computed in the feature space of a digits classifier (``classifier.features(x) -> [N, D]``)."""
    fa = _batched(classifier.features, classifier, images, batch_size)
    fb = _batched(classifier.features, classifier, reference_images, batch_size)
    return frechet_distance(fa.flatten(1), fb.flatten(1))


def summarize(samples, fp_samples, labels, classifier, reference_images, batch_size=256):
    """All metrics for one sample set, as a JSON-safe dict.

    - psnr_db, ssim: against ``fp_samples`` drawn from the same noise; None when fp_samples is None.
      psnr_db is also None when the samples are bit-identical to FP (infinite PSNR), so the dict
      stays valid JSON: None there means "identical to FP".
    - fid: digits-FID against ``reference_images`` (real digits).
    - accuracy: ``classifier(samples)`` logits vs the requested ``labels``.
    """
    def finite_or_none(v):
        return None if v is None or math.isinf(v) else v

    psnr_v = ssim_v = None
    if fp_samples is not None:
        psnr_v = psnr_db(samples, fp_samples)
        ssim_v = ssim(samples, fp_samples)
    logits = _batched(classifier, classifier, samples, batch_size)
    return {
        "psnr_db": finite_or_none(psnr_v),
        "ssim": finite_or_none(ssim_v),
        "fid": finite_or_none(digits_fid(classifier, samples, reference_images, batch_size)),
        "accuracy": conditional_accuracy(logits, labels),
    }
