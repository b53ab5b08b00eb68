"""The Hydra integration: launchers (`launcher`: joblib, slurm), the sweep summary callback (`sweep`) and the job
bookkeeping they share (`jobs`). Imported by Hydra by name from the config (`conf/hydra`, `conf/launcher`) and by
the entry point; nothing below the entry point imports it."""
