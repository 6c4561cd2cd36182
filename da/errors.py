"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class ConfigError(ValueError):
    """A bad name or value in the configuration, or missing data the user must provide."""


class DataError(ConfigError):
    """Data that cannot be found or read (missing download, missing domain, empty class)."""
