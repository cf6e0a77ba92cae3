"""Files: atomic writes, safe loading, checkpoints, resume state, the dense and score caches."""
