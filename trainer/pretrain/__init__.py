"""Pretraining: the MAE model, its config, the optimizer, and the train loop in parts."""
