"""Regular expressions from config run on RE2: matching is linear in the input, so a
hostile pattern (``(a+)+$``) cannot stall a worker. Backreferences inside patterns are
not supported by RE2 and are refused when the config is validated."""

from __future__ import annotations

from functools import lru_cache

import re2


@lru_cache(maxsize=4096)
def compile_regex(pattern: str, case_insensitive: bool = False):
    """Compile with RE2; raises ValueError with RE2's reason for a pattern it refuses."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not case_insensitive
    try:
        return re2.compile(pattern, options)
    except Exception as exc:  # re2's error type is private to its extension module
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(reason) from None
