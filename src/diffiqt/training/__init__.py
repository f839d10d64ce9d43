"""Training: simulated (HF, LF) pairs cut into blocks, the training loop, pre-simulated pairs files, torchrun."""
