"""Errors a user can fix. The runner prints them as one line (no traceback) and records them in results.json."""


class ADError(Exception):
    """Base class for expected, user-fixable errors: the message names the file or key and the fix."""


class DataError(ADError):
    """Bad dataset root, layout, category, image or mask."""


class ConfigError(ADError):
    """A config value that cannot work."""


class WeightsError(ADError):
    """Pretrained weights that are missing or do not fit the backbone."""
