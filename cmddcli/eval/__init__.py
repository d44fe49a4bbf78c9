"""Evaluation: PSNR / SSIM / MAE (metrics.py; SSIM is scikit-image's, as published) and the published
DPDD / RealDOF protocol for a model or saved predictions (protocol.py)."""
