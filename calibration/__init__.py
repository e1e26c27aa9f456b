"""Calibration data: image folders read with the model's own preprocessing."""

CALIB_SIZE = 512  # images that calibrate, where a command is not told
CALIB_SEED = 0  # selects which images calibrate
