"""Measuring: SAE reconstruction and CE, label quality, batched continuations and their re-reading, steering calibration."""
