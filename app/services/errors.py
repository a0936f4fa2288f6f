"""The services' domain errors: what fails a board's inspection, with no HTTP in them.

Each names its code once; :data:`app.core.errors.DOMAIN_ERRORS` says how it is answered. The
stores' own errors (:mod:`app.services.golden_store`, :mod:`app.services.recipe_store`) and
the image's (:class:`app.inference.imaging.ImageError`) are domain errors too.
"""

from __future__ import annotations

from app.core.domain_errors import DomainError


class InvalidMetadataError(DomainError, ValueError):
    """Board metadata (serial, tags, unit serials ...) that cannot be taken as sent."""

    code = "invalid_metadata"


class AlignmentFailedError(DomainError):
    """The golden board does not align to the board (another design, side or orientation)."""

    code = "alignment_failed"


class OverloadedError(DomainError):
    """The model's queue is full."""

    code = "overloaded"


class OverCapacityError(DomainError):
    """The board's pixels do not fit the memory budget now."""

    code = "over_capacity"


class ShuttingDownError(DomainError):
    """The model no longer takes work: the service is stopping."""

    code = "shutting_down"


class ModelFailedError(DomainError):
    """The model failed on the batch that held the board."""

    code = "model_error"


class InspectionTimeoutError(DomainError):
    """The board took longer than its timeout; its work was dropped."""

    code = "timeout"


class ClientGoneError(DomainError):
    """The client left before its board was done; the work was dropped."""

    code = "client_closed_request"


class RecipeOutdatedError(DomainError):
    """The product's recipe was drawn on a golden board of another size than the stored one."""

    code = "recipe_outdated"


class PairModelUnavailableError(DomainError):
    """A board came with a golden board, and the service has no pair model."""

    code = "pair_model_unavailable"


class RecordsUnavailableError(DomainError):
    """The records cannot be read or written now; retrying later helps."""

    code = "records_unavailable"
