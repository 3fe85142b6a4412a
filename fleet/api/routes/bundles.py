"""/api/v1/bundles: upload (verified against trusted keys), list, read, download with HTTP Range."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from fleet import audit, bundles
from fleet.api.deps import ActorDep, ContextDep, DeviceOrViewerDep, OperatorDep, SessionDep, ViewerDep
from fleet.api.download import bundle_response, check_device_may_download
from fleet.context import FleetContext
from fleet.db.models import Bundle
from fleet.errors import PayloadTooLargeError
from fleet.rollout import downloads
from fleet.schemas import BundleDetail, BundlePublic
from sdk.errors import NotABundleError

router = APIRouter(prefix="/bundles", tags=["bundles"])
_CHUNK = 1024 * 1024


#: the body as the route reads it itself (see ``upload_bundle``), for the OpenAPI document
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "the .efb"}},
                }
            }
        },
    }
}


@router.post("", response_model=BundlePublic, status_code=201, openapi_extra=_UPLOAD_BODY)
async def upload_bundle(request: Request, ctx: ContextDep, actor: ActorDep, _: OperatorDep) -> BundlePublic:
    """Upload an ``.efb`` (multipart field ``file``); its signature must verify against one of the fleet's trusted keys."""
    # The body is read here, after the token was checked: with an ``UploadFile`` parameter FastAPI
    # reads all of it (300 MB from anyone) before any dependency runs. Its size and pace are
    # bounded while it streams in by fleet.api.body_limits.
    form = await request.form(max_files=1, max_fields=4)
    try:
        file = form.get("file")
        if not isinstance(file, StarletteUploadFile):
            raise NotABundleError("the upload needs the bundle in the multipart form field 'file'")
        staged = ctx.storage.staging_path(f"{secrets.token_hex(8)}.efb")
        limit = int(ctx.settings.max_bundle_mb * 1024 * 1024)
        size = 0
        try:
            with open(staged, "wb") as out:
                while chunk := await file.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(
                            f"the bundle is larger than {ctx.settings.max_bundle_mb:g} MiB"
                        )
                    out.write(chunk)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    finally:
        await form.close()
    # Verifying and storing (an S3 upload of gigabytes) blocks: off the event loop, so the
    # replica keeps serving everything else meanwhile.
    return await run_in_threadpool(_store, ctx, staged, actor)


def _metrics(bundle: Bundle) -> dict[str, Any]:
    metrics = (bundle.manifest or {}).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _public(bundle: Bundle) -> BundlePublic:
    return BundlePublic.model_validate(bundle).model_copy(update={"metrics": _metrics(bundle)})


def _store(ctx: FleetContext, staged: Path, actor: audit.Actor) -> BundlePublic:
    with ctx.db.session() as session:
        bundle = bundles.store_upload(session, ctx.storage, staged, ctx.trusted_keys)
        audit.record(
            session,
            actor,
            audit.Action.BUNDLE_UPLOAD,
            bundle.id,
            name=bundle.name,
            version=bundle.version,
            profile=bundle.profile,
            sha256=bundle.sha256,
        )
        return _public(bundle)


@router.get("", response_model=list[BundlePublic])
def list_bundles(session: SessionDep, _: ViewerDep) -> list[BundlePublic]:
    return [_public(b) for b in bundles.list_bundles(session)]


@router.get("/{bundle_id}", response_model=BundleDetail)
def get_bundle(bundle_id: str, session: SessionDep, _: ViewerDep) -> BundleDetail:
    bundle = bundles.get(session, bundle_id)
    return BundleDetail.model_validate(bundle).model_copy(update={"metrics": _metrics(bundle)})


@router.get(
    "/{bundle_id}/download",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the whole `.efb` file"},
        206: {"description": "the requested byte range (`Range: bytes=N-`)"},
        307: {"description": "with presigned S3 downloads: where to fetch the file"},
        416: {"description": "the range starts past the end of the file"},
    },
)
def download_bundle(
    bundle_id: str, request: Request, session: SessionDep, ctx: ContextDep, token: DeviceOrViewerDep
) -> Response:
    """The ``.efb`` file; honours ``Range: bytes=N-`` (206) so a cut download resumes.

    A device token gets only the bundles its device's desired state names (403 otherwise)."""
    bundle = bundles.get(session, bundle_id)
    check_device_may_download(session, token, bundle)
    if token.role == "device" and token.device_id:
        # The fleet's own evidence that this device fetched it (rollouts check it, see rollout.downloads).
        downloads.record(session, token.device_id, bundle.id)
    filename = f"{bundle.name}-{bundle.version}-{bundle.profile}.efb"
    direct = ctx.storage.download_url(bundle.storage_key, filename)
    if direct is not None:
        return RedirectResponse(direct, status_code=307)
    return bundle_response(
        ctx.storage,
        bundle.storage_key,
        size=bundle.size,
        sha256=bundle.sha256,
        filename=filename,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
    )
