"""edgefleet's shared contract: bundles, manifests, signing, hardware profiles and the MQTT protocol.

Imported by the converter, the agent and the fleet alike; depends only on numpy, pydantic,
cryptography, httpx and PyYAML, so the agent stays small.
"""

import importlib as _importlib
from typing import TYPE_CHECKING
from typing import Any as _Any

# Names are imported on first use: a device agent that needs only the errors and the bundle reader
# does not pay for pydantic models it never touches (start-up time is a goal on small boards).
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        [
            "VerifiedBundle",
            "extract_bundle",
            "file_sha256",
            "verify_bundle",
            "verify_directory",
            "write_bundle",
        ],
        "sdk.bundle",
    ),
    **dict.fromkeys(
        [
            "AuthError",
            "BundleError",
            "BundleLayoutError",
            "BundleTooLargeError",
            "ConfigError",
            "ConflictError",
            "ConversionError",
            "DatatypeError",
            "EdgeError",
            "FleetError",
            "InferenceError",
            "IntegrityError",
            "InvalidInputError",
            "KeyFileError",
            "ManifestError",
            "ModelNotFoundError",
            "ModelStoreError",
            "NotABundleError",
            "NotFoundError",
            "OverloadedError",
            "ProfileError",
            "ProtocolError",
            "SignatureError",
            "UnsafeMemberError",
            "UntrustedSignerError",
        ],
        "sdk.errors",
    ),
    **dict.fromkeys(["Manifest", "bundle_filename"], "sdk.manifest"),
    **dict.fromkeys(["HardwareProfile", "available_profiles", "load_profile"], "sdk.profiles"),
    **dict.fromkeys(["parse_topic", "topic"], "sdk.topics"),
    "AgentClient": "sdk.agent_client",
    "FleetClient": "sdk.fleet_client",
}

if TYPE_CHECKING:
    from sdk.agent_client import AgentClient
    from sdk.bundle import (
        VerifiedBundle,
        extract_bundle,
        file_sha256,
        verify_bundle,
        verify_directory,
        write_bundle,
    )
    from sdk.errors import (
        AuthError,
        BundleError,
        BundleLayoutError,
        BundleTooLargeError,
        ConfigError,
        ConflictError,
        ConversionError,
        DatatypeError,
        EdgeError,
        FleetError,
        InferenceError,
        IntegrityError,
        InvalidInputError,
        KeyFileError,
        ManifestError,
        ModelNotFoundError,
        ModelStoreError,
        NotABundleError,
        NotFoundError,
        OverloadedError,
        ProfileError,
        ProtocolError,
        SignatureError,
        UnsafeMemberError,
        UntrustedSignerError,
    )
    from sdk.fleet_client import FleetClient
    from sdk.manifest import Manifest, bundle_filename
    from sdk.profiles import HardwareProfile, available_profiles, load_profile
    from sdk.topics import parse_topic, topic


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AgentClient",
    "AuthError",
    "BundleError",
    "BundleLayoutError",
    "BundleTooLargeError",
    "ConfigError",
    "ConflictError",
    "ConversionError",
    "DatatypeError",
    "EdgeError",
    "FleetClient",
    "FleetError",
    "HardwareProfile",
    "InferenceError",
    "IntegrityError",
    "InvalidInputError",
    "KeyFileError",
    "Manifest",
    "ManifestError",
    "ModelNotFoundError",
    "ModelStoreError",
    "NotABundleError",
    "NotFoundError",
    "OverloadedError",
    "ProfileError",
    "ProtocolError",
    "SignatureError",
    "UnsafeMemberError",
    "UntrustedSignerError",
    "VerifiedBundle",
    "__version__",
    "available_profiles",
    "bundle_filename",
    "extract_bundle",
    "file_sha256",
    "load_profile",
    "parse_topic",
    "topic",
    "verify_bundle",
    "verify_directory",
    "write_bundle",
]
