"""Building a dataset: plan -> process partitions -> global steps -> commit -> manifest."""
