"""Experiment loggers at the edge of a run (TensorBoard): they read the typed record, never change it."""
