"""The one exception type the scripts turn into a single clear line and a non-zero exit."""


class ConfigError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""
