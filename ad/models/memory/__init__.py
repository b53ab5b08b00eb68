"""Memory and statistical models: a bank or a distribution of normal patch features, scored by distance
(PatchCore, SPADE, AnomalyDINO: k-NN over a bank; PaDiM: Gaussian per position; DFM: PCA residual)."""
