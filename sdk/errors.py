"""The one exception tree of edgefleet.

Every error that edgefleet raises on purpose is an :class:`EdgeError`. Each CLI turns it into one
line on stderr and a non-zero exit; each HTTP edge turns it into a status code and
``{"error": "..."}``. Third-party errors are mapped into this tree where they are caught, so callers
never need to know which library failed.

::

    EdgeError
    ├── ConfigError                  bad user input or settings (a flag, a file, a value)
    │   └── ProfileError             a hardware profile is unknown or invalid
    ├── KeyFileError                 a signing or public key cannot be read or written
    ├── BundleError                  a bundle cannot be written, read or trusted
    │   ├── NotABundleError          the file is not a gzip tar bundle at all (or is truncated)
    │   ├── BundleLayoutError        a member is missing, extra, duplicated, out of order or oversized
    │   ├── UnsafeMemberError        a member is a link, device, absolute path or climbs out with ``..``
    │   ├── BundleTooLargeError      the unpacked size passes the cap (decompression bomb)
    │   ├── IntegrityError           a file's sha256 or size differs from the manifest
    │   ├── SignatureError           the manifest signature does not verify
    │   ├── UntrustedSignerError     the signature is valid but its key is not trusted
    │   └── ManifestError            manifest.json is not a valid manifest
    ├── ProtocolError                a message or tensor breaks the wire contract
    │   └── DatatypeError            an unknown or mismatched Open Inference Protocol datatype
    ├── ConversionError              the converter cannot produce an acceptable model
    ├── ModelStoreError              the agent cannot install, activate or roll back a version
    ├── InferenceError               a request cannot be served
    │   ├── ModelNotFoundError       unknown model or version
    │   ├── InvalidInputError        wrong input name, shape, datatype or element count
    │   └── OverloadedError          the model's queue is full; retry later
    └── FleetError                   a fleet API call failed (raised by the sdk clients)
        ├── NotFoundError            the resource does not exist
        ├── AuthError                missing, wrong or insufficient token
        └── ConflictError            the request conflicts with the current state

pydantic's ``ValidationError`` (a manifest, a profile, a message, a credentials file) becomes one
line through :func:`validation_summary`, so each reader words only what was invalid, not how.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module stays importable without pydantic (see sdk/__init__.py)
    from pydantic import ValidationError


class EdgeError(Exception):
    """Root of every error edgefleet raises on purpose."""

    #: HTTP status an HTTP edge answers with when this error reaches it.
    http_status: int = 400


class ConfigError(EdgeError):
    """Bad user input or settings."""


class ProfileError(ConfigError):
    """A hardware profile is unknown or invalid."""


class KeyFileError(EdgeError):
    """A signing or public key file cannot be read or written."""


class BundleError(EdgeError):
    """A bundle cannot be written, read or trusted."""

    http_status = 422


class NotABundleError(BundleError):
    """The file is not a gzip-compressed tar archive, or is truncated."""


class BundleLayoutError(BundleError):
    """A member is missing, extra, duplicated, out of order or larger than the manifest says."""


class UnsafeMemberError(BundleError):
    """A member is a link, a device, an absolute path, or a path that climbs out with ``..``."""


class BundleTooLargeError(BundleError):
    """The unpacked size passes the cap (a decompression bomb)."""


class IntegrityError(BundleError):
    """A file's sha256 or size differs from what the manifest pins."""


class SignatureError(BundleError):
    """The manifest signature does not verify."""


class UntrustedSignerError(BundleError):
    """The signature is valid, but the key that made it is not among the trusted keys."""


class ManifestError(BundleError):
    """manifest.json is not a valid manifest."""


class ProtocolError(EdgeError):
    """A message or tensor breaks the wire contract."""


class DatatypeError(ProtocolError):
    """An unknown or mismatched Open Inference Protocol datatype."""


class ConversionError(EdgeError):
    """The converter cannot produce an acceptable model."""


class ModelStoreError(EdgeError):
    """The agent cannot install, activate or roll back a model version."""

    http_status = 409


class InferenceError(EdgeError):
    """An inference request cannot be served."""


class ModelNotFoundError(InferenceError):
    """Unknown model or version."""

    http_status = 404


class InvalidInputError(InferenceError):
    """Wrong input name, shape, datatype or element count."""


class OverloadedError(InferenceError):
    """The model's queue is full; the client should retry later."""

    http_status = 503


class FleetError(EdgeError):
    """A fleet API call failed."""


class NotFoundError(FleetError):
    """The resource does not exist."""

    http_status = 404


class AuthError(FleetError):
    """Missing, wrong or insufficient credentials."""

    http_status = 401


class ConflictError(FleetError):
    """The request conflicts with the current state."""

    http_status = 409


def validation_summary(exc: ValidationError, *, most: int = 3) -> str:
    """One line for a pydantic error: ``where: what`` for the first ``most`` problems, then a count."""
    problems = [
        f"{'.'.join(str(part) for part in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
    ]
    line = "; ".join(problems[:most])
    if len(problems) > most:
        line += f" (and {len(problems) - most} more problems)"
    return line
