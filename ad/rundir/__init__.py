"""The run directory's formats: `results.json` (`records`), `predictions.csv`/`history.csv` (`layout`),
`model.pt` (`modelfile`), `test_maps.npz` (`maps_store`), and how runs name their parameters (`params`).
Read by the aggregator, the report, predict and export without importing the training loop."""
