"""The configuration error, in a module of its own so that every layer that reads a config can raise it
without importing the config machinery (and so without an import cycle between the config and the data)."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration or override; the message names the key and what is allowed."""
