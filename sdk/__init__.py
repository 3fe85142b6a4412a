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

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from sdk.agent_client import AgentClient  # noqa: F401
    from sdk.bundle import (  # noqa: F401
        VerifiedBundle,
        extract_bundle,
        file_sha256,
        verify_bundle,
        verify_directory,
        write_bundle,
    )
    from sdk.errors import (  # noqa: F401
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
    from sdk.fleet_client import FleetClient  # noqa: F401
    from sdk.manifest import Manifest, bundle_filename  # noqa: F401
    from sdk.profiles import HardwareProfile, available_profiles, load_profile  # noqa: F401
    from sdk.topics import parse_topic, topic  # noqa: F401


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

# The one list of exported names is _LAZY; TYPE_CHECKING repeats them only for type checkers and
# tests/sdk/test_exported_members.py checks the two agree.
__all__ = [*sorted(_LAZY), "__version__"]
