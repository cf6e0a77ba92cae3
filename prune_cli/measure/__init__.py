"""Measurements of a model: multiply-adds, latency, bytes, CSR inference."""
