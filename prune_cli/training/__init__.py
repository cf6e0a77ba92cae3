"""Training: one ``fit`` loop for every phase, ``evaluate``, and the stage settings they read."""
