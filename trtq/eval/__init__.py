"""Evaluation metrics (PSNR, SSIM, digits-FID, conditional accuracy) and their bootstrap intervals."""

from trtq.eval.metrics import (
    bootstrap_interval,
    conditional_accuracy,
    digits_fid,
    format_interval,
    frechet_distance,
    psnr_db,
    ssim,
    summarize,
)

__all__ = ["bootstrap_interval", "conditional_accuracy", "digits_fid", "format_interval", "frechet_distance",
           "psnr_db", "ssim", "summarize"]
