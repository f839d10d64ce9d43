"""Inference: a low-field scan enhanced by a model, the tilers that evaluate a denoiser in pieces, multi-scan fusion."""
