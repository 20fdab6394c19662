"""Helpers no stage imports: sample datasets, synthetic data, the GPU smoke run, seed sweeps."""
