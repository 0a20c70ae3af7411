"""Errors the stages raise to tell the runtime what to do with a message."""


class RetryLater(Exception):
    """Transient: deliver this message again after ``delay_s`` (None: the bus decides)."""

    def __init__(self, reason: str, delay_s: float | None = None):
        super().__init__(reason)
        self.delay_s = delay_s


class LookupUnavailable(RetryLater):
    """A crosswalk map's database (``table``: the map's id) or the AI standardizer
    (``table`` None) cannot answer now: the plan waits and is tried again."""

    def __init__(self, reason: str, *, table: str | None = None, delay_s: float | None = None):
        super().__init__(reason, delay_s)
        self.table = table


class Unprocessable(Exception):
    """The input itself is bad (not DICOM, truncated, missing attributes): retrying
    cannot help, so the object is quarantined with this reason."""


class DeliveryRefused(Exception):
    """The destination will not take this instance as it is (a conflicting instance
    with the same SOP Instance UID, an unsupported SOP class or transfer syntax):
    retrying cannot help, so it becomes an exception record at once."""


class SecretError(LookupError):
    """A secret that cannot be read; the message names the reference, never the value."""


class LookupFailed(Exception):
    """A crosswalk or an AI standardization found no value and its policy is ``fail``:
    the instance is fine, the map or the model is not, so it becomes a ``failed``
    exception record (not a quarantine), retried once the map has the entry. The
    message names ids and tags, never the value."""


class CrosswalkMissing(LookupFailed):
    """A crosswalk map with ``on_miss: fail`` has no entry for a key."""


class Held(Exception):
    """The instance cannot go on until an operator acts (a crosswalk map with
    ``on_miss: hold`` has no entry yet): it is kept as a ``held`` exception record,
    to be released once the map has the entry. The message names ids only."""
