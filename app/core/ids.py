"""The product id: one rule for every place that takes one (the golden-board and recipe
routes and stores, ``?product=`` and the form field of an inspection, the records' filter,
the recipe a record names).

A product id names a golden board's file and a recipe's folder, and goes into URL paths, so
no separators, and bounded. The first character is a letter or digit: "." and ".." would be
stored, but no URL path could name them again (clients resolve dot segments), a leading dot
hides the file, and a leading "-" reads as an option on a command line. 64 characters is the
limit the golden store has always enforced when it wrote a board, so every id already stored
(boards, recipes, the records' products) keeps it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from app.core.domain_errors import DomainError

#: Longest product id.
PRODUCT_MAX_CHARS = 64
#: What a product id may look like (whole-string match).
PRODUCT_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{PRODUCT_MAX_CHARS - 1}}}")
#: The rule in words, as every refusal states it.
PRODUCT_RULE = (f"1 to {PRODUCT_MAX_CHARS} characters from A-Z, a-z, 0-9, '.', '_' and '-', "
                "starting with a letter or digit")
#: The rule as a JSON schema (OpenAPI parameters and models).
PRODUCT_SCHEMA: dict[str, Any] = {
    "pattern": f"^{PRODUCT_PATTERN.pattern}$", "maxLength": PRODUCT_MAX_CHARS,
}


class InvalidProductError(DomainError, ValueError):
    """A product id that does not match :data:`PRODUCT_PATTERN`."""

    code = "invalid_product"


def check_product(product: object, where: str = "") -> str:
    """Returns ``product`` if it is a valid id.

    Args:
        product: The id received.
        where: What named it, prefixed to the message (e.g. ``"?product=: "``).

    Raises:
        InvalidProductError: Naming the id received and the rule.
    """
    if not isinstance(product, str) or not PRODUCT_PATTERN.fullmatch(product):
        raise InvalidProductError(
            f"{where}product id {product!r} is invalid: expected {PRODUCT_RULE}")
    return product


#: A product id as a pydantic field: checked by :func:`check_product`, documented with its
#: pattern.
ProductId = Annotated[str, Field(json_schema_extra=PRODUCT_SCHEMA),
                      AfterValidator(check_product)]
