"""A stored bundle as an HTTP response: streamed from any storage, with single ``Range`` requests.

Devices resume a cut download with ``Range: bytes=N-`` (206 + ``Content-Range``). Anything this
does not serve as a range (several ranges, another unit, a syntax error) gets the whole file (200),
which RFC 9110 allows and the agent handles; a range past the end is 416.

A device token downloads only what the fleet's own record of that device's desired state names
(:func:`check_device_may_download`); what the device says it wants is not asked.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from fleet.db.models import Bundle, Device, Token
from fleet.errors import ForbiddenError
from fleet.storage import BundleStorage


def check_device_may_download(session: Session, token: Token, bundle: Bundle) -> None:
    """403 unless ``token`` is not a device's, or its device's current desired state names ``bundle``.

    Matched by sha256: two bundles with one digest are one file (and one name, version and profile).
    """
    if token.role != "device":
        return
    device = session.get(Device, token.device_id) if token.device_id else None
    named = device is not None and any(m.get("sha256") == bundle.sha256 for m in device.desired_models)
    if not named:
        raise ForbiddenError(
            f"bundle {bundle.id} is not in the desired state of device {token.device_id}; "
            "a device token downloads only the bundles its rollouts gave it"
        )


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (inclusive) of a single byte range, or None to send the whole file."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if (
        not dash
        or not (first or last)
        or not (first.isdigit() or not first)
        or not (last.isdigit() or not last)
    ):
        return None
    if not first:  # "-N": the last N bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable
    if end < start:
        return None
    return start, end


def _disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"


def bundle_response(
    storage: BundleStorage,
    key: str,
    *,
    size: int,
    sha256: str,
    filename: str,
    range_header: str | None,
    if_range: str | None,
) -> Response:
    etag = f'"{sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "X-Content-SHA256": sha256,
        "Content-Disposition": _disposition(filename),
    }
    # If-Range with another validator: the client's prefix is of another file, so send it all.
    wanted = None if if_range is not None and if_range != etag else range_header
    try:
        byte_range = parse_range(wanted, size)
    except RangeNotSatisfiable:
        return JSONResponse(
            {"error": f"range {wanted} is outside the {size}-byte bundle"},
            status_code=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    if byte_range is None:
        stream, status, length = storage.open(key), 200, size
    else:
        start, end = byte_range
        stream, status, length = storage.open(key, start, end), 206, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        stream,
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
        # also after a client went away mid-download: the S3 connection goes back to the pool
        background=BackgroundTask(stream.close),
    )
