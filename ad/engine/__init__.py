"""The generic training/evaluation engine: one loop for every model (`trainer`), run outputs (`outputs`),
TensorBoard logging (`tensorboard`), the sweep summary callback (`sweep`). Submodules are imported on use so
that `python -m ad.train --help` does not pay for importing torch."""
