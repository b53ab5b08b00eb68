"""Hydra plugin shim: Hydra only accepts launchers defined under the `hydra_plugins` namespace package.
The implementation lives in `ad.launch.launcher`."""
