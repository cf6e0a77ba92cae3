"""Pruning: masks and thresholding, strategies (scores only), schedules, units and shrinking."""
