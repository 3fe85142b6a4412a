"""What a device receives when it registers, and keeps in its ``--credentials`` file."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from sdk.errors import ConfigError, validation_summary
from sdk.fsio import write_atomic


class DeviceCredentials(BaseModel):
    """Returned by ``POST /api/v1/devices`` and stored by the device (mode 0600).

    ``token`` authenticates the device to the fleet's HTTP API (bundle downloads);
    ``mqtt_username`` / ``mqtt_password`` to the broker, where the ACL confines the device to its own
    ``edgefleet/v1/devices/{device_id}/`` topics.

    The CA that verifies the fleet's https and the broker's mqtts comes inline as ``ca_pem`` (a
    fleet with TLS, ``edge-fleet up --tls``, issues it so: the credentials file is all a device
    needs), or as ``ca_file``, a PEM file an operator puts beside it (a relative path is relative to
    the credentials file). ``ca_file`` wins when both are there; with neither, the system's CAs.
    """

    model_config = ConfigDict(extra="allow")

    device_id: str
    token: str
    mqtt_username: str
    mqtt_password: str
    fleet_url: str | None = None
    broker_url: str | None = None
    #: PEM CA bundle to verify the broker's and fleet's TLS certificates (mqtts://, https://).
    ca_file: str | None = None
    #: the same, inline: the site CA certificate(s) as PEM text.
    ca_pem: str | None = None
    _folder: Path | None = PrivateAttr(default=None)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts only this CA, or None when neither field names one."""
        try:
            if self.ca_file:
                path = Path(self.ca_file)
                if not path.is_absolute() and self._folder is not None:
                    path = self._folder / path
                return ssl.create_default_context(cafile=str(path))
            if self.ca_pem:
                return ssl.create_default_context(cadata=self.ca_pem)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA of the credentials of {self.device_id}: {exc}") from None
        return None

    #: base64 raw Ed25519 public key of the fleet, pinned at registration: the agent applies only
    #: desired states signed with it (sdk.desired_auth).
    fleet_key: str | None = None
    #: the hardware profile the device was registered with (reported back in ``reported``).
    profile: str | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.model_dump_json(indent=1, exclude_none=True).encode("utf-8"), mode=0o600)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeviceCredentials:
        path = Path(path)
        try:
            credentials = cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
            credentials._folder = path.parent
            return credentials
        except OSError as exc:
            raise ConfigError(f"cannot read credentials {path}: {exc.strerror or exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"{path} is not a valid credentials file: {validation_summary(exc)}") from None
        except ValueError as exc:
            raise ConfigError(f"{path} is not a valid credentials file: {exc}") from None

    @classmethod
    def load_for(cls, path: str | Path, device_id: str) -> DeviceCredentials:
        """:meth:`load`, refusing the credentials of another device."""
        credentials = cls.load(path)
        if credentials.device_id != device_id:
            raise ConfigError(
                f"{path} holds the credentials of device {credentials.device_id!r}, not {device_id!r}"
            )
        return credentials
