"""Measurement: meters and the Lightning callback that opens a window per phase."""
