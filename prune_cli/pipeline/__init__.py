"""The pipeline: dense stage -> one loop (rounds, gradual or a smaller model) -> finish."""
