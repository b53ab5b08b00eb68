"""The loop and the stages of a run: `pipeline.run_experiment` (fit → calibrate → score+evaluate → write),
the `trainer`, `scoring` (the one prediction path) and `evaluation`. Submodules are imported on use so that
`python -m ad.train --help` does not pay for importing torch."""
