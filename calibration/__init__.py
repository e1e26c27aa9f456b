"""Calibration data: image folders read with the model's own preprocessing."""
