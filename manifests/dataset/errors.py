"""The error a generated dataset raises when it cannot be read as its index says: missing or
corrupt objects, a format it does not know, a sample out of range. Defined apart from the reader
so that the storage formats, which the reader looks up, raise it too."""

from __future__ import annotations

from ..errors import UserError


class DatasetError(UserError, ValueError):
    pass
