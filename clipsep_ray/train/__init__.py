"""Training: the per-worker loop (plain PyTorch + a thin Ray Train layer) and the TorchTrainer driver."""
