"""What a device receives when it registers, and keeps in its ``--credentials`` file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from sdk.errors import ConfigError


class DeviceCredentials(BaseModel):
    """Returned by ``POST /api/v1/devices`` and stored by the device (mode 0600).

    ``token`` authenticates the device to the fleet's HTTP API (bundle downloads);
    ``mqtt_username`` / ``mqtt_password`` to the broker, where the ACL confines the device to its own
    ``edgefleet/v1/devices/{device_id}/`` topics.
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

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=1, exclude_none=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeviceCredentials:
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"cannot read credentials {path}: {exc.strerror or exc}") from None
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{path} is not a valid credentials file: {exc}") from None
