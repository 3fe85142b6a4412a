"""Fleet-specific errors, subclasses of the sdk tree (see ``sdk.errors``)."""

from __future__ import annotations

from sdk.errors import AuthError, BundleError, EdgeError


class ForbiddenError(AuthError):
    """The token is valid but its role may not do this."""

    http_status = 403


class TokenRefusedError(AuthError):
    """A genuine token (its secret matches) that is revoked, expired or of a decommissioned device.

    Not a guess: it does not count towards refusing the client's address (``api.failures``).
    """


class PayloadTooLargeError(BundleError):
    """An upload is larger than the fleet accepts."""

    http_status = 413


class StorageError(EdgeError):
    """Bundle storage (an S3 endpoint, a volume) failed or cannot be reached; the call may be retried."""

    http_status = 503
