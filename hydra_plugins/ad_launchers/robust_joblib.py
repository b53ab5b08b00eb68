"""`launcher=joblib`'s launcher class (see ad.launch.launcher for what it does). Hydra accepts launchers only
from the `hydra_plugins` namespace; `ad.train` registers this class explicitly (`register_plugins`), because
Hydra's plugin scan does not see namespace packages of an editable install."""
from ad.launch.launcher import RobustJoblibLauncher as _Impl


class RobustJoblibLauncher(_Impl):
    pass
