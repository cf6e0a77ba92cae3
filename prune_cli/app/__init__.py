"""The commands: the Hydra shell (prune-run), the Python API, the dry run, sweep callbacks."""
