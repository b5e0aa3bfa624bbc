"""Assertions shared by the command-line tests: no crash, and bad input as one line with exit 2."""

from __future__ import annotations


def assert_no_crash(result) -> None:
    """The command ended through sys.exit, not an uncaught exception, and printed no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def assert_input_error(result) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr: the problem and what to do. Returns that line."""
    assert_no_crash(result)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith("fedguard: error: "), lines[0]
    return lines[0]
