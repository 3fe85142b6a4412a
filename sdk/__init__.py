"""edgefleet's shared contract: bundles, manifests, signing, hardware profiles and the MQTT protocol.

Imported by the converter, the agent and the fleet alike; depends only on numpy, pydantic,
cryptography, httpx and PyYAML, so the agent stays small.
"""

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
from sdk.manifest import Manifest, bundle_filename
from sdk.profiles import HardwareProfile, available_profiles, load_profile
from sdk.topics import parse_topic, topic

__version__ = "0.1.0"

__all__ = [
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
