"""`launcher=slurm`'s launcher class (see ad.launch.slurm for what it adds to hydra-submitit-launcher). Hydra
accepts launchers only from the `hydra_plugins` namespace; `ad.train` registers this class explicitly."""
from ad.launch.slurm import SlurmLauncher as _Impl


class SlurmLauncher(_Impl):
    pass
