"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class ConfigError(ValueError):
    """A bad name or value in the configuration, or missing data the user must provide."""


class DataError(ConfigError):
    """Data that cannot be found or read (missing download, missing domain, empty class)."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line: its first three non-empty lines joined (Hydra's and OmegaConf's
    errors span several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__
