"""Training: the shared BPR sampler and the leakage-proof trainer."""
