"""ad: offline-first, Hydra-composed experiments for industrial visual anomaly detection."""
__version__ = "0.1.0"
