"""The exception the CLI turns into a one-line message and exit code 2, and the one a SIGTERM raises."""


class InputError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class Terminated(BaseException):
    """Raised by the SIGTERM handler of the console script: a BaseException that is not a SystemExit, so that the
    guards around a model's own code (which catch its ``sys.exit()``) let it through, and every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
