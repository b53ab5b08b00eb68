"""Errors a user can fix. The runner prints them as one line (no traceback) and records them in results.json."""


class ADError(Exception):
    """Base class for expected, user-fixable errors: the message names the file or key and the fix."""


class DataError(ADError):
    """Bad dataset root, layout, category, image or mask."""


class ConfigError(ADError):
    """A config value that cannot work."""


class WeightsError(ADError):
    """Pretrained weights that are missing or do not fit the backbone."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, a plain `kill`) raised in the main thread, so that it unwinds like
    Ctrl-C: the run is recorded as interrupted and its checkpoints are kept for resume."""

    def __init__(self, signum: int = 15) -> None:
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class TrainingDiverged(ADError):
    """The training loss became NaN or infinite."""
