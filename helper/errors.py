"""The one exception type the scripts turn into a single clear line and a non-zero exit."""


class ConfigError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or inf: a setting (weight, learning rate) the run cannot train with.
    Raised at the end of the epoch, before anything of it is saved, on every rank alike (the epoch's
    loss is all-reduced)."""
