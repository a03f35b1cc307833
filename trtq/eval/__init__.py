"""Evaluation metrics (PSNR, SSIM, digits-FID, conditional accuracy)."""

from trtq.eval.metrics import (
    conditional_accuracy,
    digits_fid,
    frechet_distance,
    psnr_db,
    ssim,
    summarize,
)

__all__ = ["conditional_accuracy", "digits_fid", "frechet_distance", "psnr_db", "ssim", "summarize"]
