"""Normalizing-flow models: the likelihood of backbone features under a flow fitted to normals
(FastFlow, CFlow, DifferNet)."""
