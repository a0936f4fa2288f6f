"""The base of the errors that the services, records and inference raise for a client's
request: a machine code and a message, and no HTTP.

Kept free of any web framework, so that a service can be called, and its errors caught, from a
CLI, a queue consumer or a test. :mod:`app.core.errors` holds the one table that turns a
domain error into an HTTP answer, by its code.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request that cannot be served as sent, or a failure to report to its client.

    Attributes:
        code: Short snake_case machine code; a class names it once for all its errors, and
            a family whose problems differ (an image's) passes one per error.
        message: One line for an operator: the value received and what is expected.
        retry_after_s: For a passing condition (load, a store that does not answer): how many
            seconds to wait before sending the same again; ``None`` when retrying will not help.
    """

    code: str = "domain_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # An instance attribute shadows the class's code for this error only.
            self.code = code
        self.retry_after_s = retry_after_s
