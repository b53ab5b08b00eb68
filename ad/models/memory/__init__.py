"""Memory and statistical models: a bank or a distribution of normal patch features, scored by distance
(PatchCore, SPADE, AnomalyDINO: k-NN over a bank; PaDiM: Gaussian per position; DFM: PCA residual)."""
# The k-NN search for other packages: `ad.export` swaps a model's KnnIndex for the brute-force torch search
# (data-independent control flow, so it traces into an ONNX graph).
from ad.models.memory._memory import KnnIndex  # noqa: F401
from ad.models.memory._memory import _TorchFlat as BruteForceKnn  # noqa: F401
