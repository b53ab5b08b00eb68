"""Hydra integration: launchers, the sweep summary and job bookkeeping shared by the launchers."""
