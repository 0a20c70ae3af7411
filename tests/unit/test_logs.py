"""shared/logs.py: errors described without values, log records made safe."""

import errno
import subprocess
import sys
import textwrap

from shared.errors import DeliveryRefused, RetryLater
from shared.logs import describe_error, redact
from tests.support.procs import REPO

CANARY = "CANARY7Q3"


def test_own_errors_keep_their_reasons():
    assert describe_error(RetryLater("peer down")) == "peer down"
    assert describe_error(DeliveryRefused("conflict"), typed=True) == "DeliveryRefused: conflict"


def test_os_errors_lose_their_file_names():
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", f"/data/out/{CANARY}/x.dcm")
    assert describe_error(exc) == "FileNotFoundError (ENOENT: No such file or directory)"
    assert describe_error(OSError(f"{CANARY} and no errno")).startswith("OSError")
    assert CANARY not in describe_error(OSError(f"{CANARY} and no errno"))


def test_other_errors_are_their_type_and_where_they_were_raised():
    try:
        int(f"{CANARY}")
    except ValueError as exc:
        described = describe_error(exc)
    assert described.startswith("ValueError raised at tests/unit/test_logs.py:") and CANARY not in described


def test_redact_withholds_quoted_values_of_either_kind():
    assert redact(f"Invalid value for VR DA: '{CANARY}'.") == "Invalid value for VR DA: <value withheld>."
    assert redact(f'Value "{CANARY}" is not valid for elements with a VR of DS') == (
        "Value <value withheld> is not valid for elements with a VR of DS")
    assert CANARY not in redact(repr(f"it's \"{CANARY}\" 'x"))
    assert redact("x" * 5000).endswith("... (3000 characters withheld)")


def test_installed_logging_keeps_values_out_of_every_line():
    """In a process of its own: install() changes the process's logging for good."""
    script = textwrap.dedent(f"""
        import logging, warnings
        from shared.logs import install
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
        install()
        from pydicom import config
        from pydicom.misc import warn_and_log
        from pydicom.valuerep import validate_value
        warn_and_log("Invalid value for VR DA: '{CANARY}'.")          # pydicom's logger and a warning
        validate_value("DA", "{CANARY}", config.settings.reading_validation_mode)  # off: silent
        warnings.warn("a value {CANARY!r} in a warning")
        logging.getLogger("somelib").warning("%s", "x" * 5000)        # capped
        try:
            open("/nonexistent/{CANARY}/x.dcm")
        except OSError:
            logging.getLogger("shared.stages").exception("could not read")
        try:
            raise ValueError("bad {CANARY}")
        except ValueError:
            logging.getLogger("somelib").exception("failed")
        print("done")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "done" in result.stdout, output
    lines = output.splitlines()
    assert "pydicom WARNING Invalid value for VR DA: <value withheld>." in lines, output
    assert any(line.startswith("py.warnings WARNING") for line in lines), output
    assert "FileNotFoundError (ENOENT: No such file or directory)" in lines, output
    assert any(line.startswith("ValueError raised at <string>:") for line in lines), output
    assert any(line.endswith("characters withheld)") for line in lines), output
    assert CANARY not in output
