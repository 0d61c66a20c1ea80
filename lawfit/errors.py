"""The one error type lawfit raises for bad input; the CLI prints it and exits with code 2."""


class LawfitError(ValueError):
    """Bad input: the message names the file, line and field (or the option) at fault."""
