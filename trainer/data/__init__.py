"""Data: ingest (files -> .npy + manifest), phantoms, and the mixture sampler and loaders (DALI, PyTorch)."""
