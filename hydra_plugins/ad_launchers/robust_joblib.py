"""`launcher=joblib`'s launcher class (see ad.launch.launcher for what it does). Hydra accepts launchers only
from the `hydra_plugins` namespace; `ad.train` registers this class explicitly (`register_plugins`), because
Hydra's plugin scan does not see namespace packages of an editable install."""
try:
    from ad.launch.launcher import RobustJoblibLauncher as _Impl
except ImportError:  # hydra-joblib-launcher (the `sweep` extra) is not installed: nothing to offer, and Hydra's
    _Impl = None     # plugin scan of a plain `pip install .` must not warn about this module on every run

if _Impl is not None:
    class RobustJoblibLauncher(_Impl):
        pass
