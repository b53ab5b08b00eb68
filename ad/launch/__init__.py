"""The Hydra integration: launchers (`launcher`), the sweep summary callback (`sweep`). Imported by Hydra by
name from the config (`conf/hydra`, `conf/launcher`); nothing below the entry point imports it."""
