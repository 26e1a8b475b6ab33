"""Mixtures: components drawn from built datasets, sampled to their targets, shuffled globally."""
