"""The one error type raised where bad input enters (config, dataset, checkpoint, artifact)."""


class InputError(ValueError):
    """Bad input; the message is one line naming the file and the field or setting at fault."""
