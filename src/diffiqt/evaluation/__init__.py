"""Evaluation: image-quality metrics, held-out brains enhanced and scored, figures."""
