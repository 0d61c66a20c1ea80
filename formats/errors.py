"""The error every reader and writer of an exchange format raises for bad input."""


class FormatError(ValueError):
    """A file that does not follow its documented format (docs/formats.md).

    The message names the file, and where it can the line and field at fault. Each format has its own
    subclass (ManifestError, RunLogError, ...) so that a caller can tell them apart; command-line tools
    print the message and exit with code 2.
    """
