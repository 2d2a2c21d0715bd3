"""The one error a configuration raises."""


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to fix."""
