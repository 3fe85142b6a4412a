"""``/docs`` (Swagger UI) served entirely by the fleet, for sites without internet.

FastAPI's default page loads Swagger UI's JavaScript and CSS from a CDN and its favicon from
fastapi.tiangolo.com; in an air-gapped hospital that page stays blank. The files come from the
``swagger-ui-bundle-v2`` package instead (Swagger UI 5, which reads OpenAPI 3.1), and the online
spec validator badge is switched off (it would send the spec's URL to validator.swagger.io).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
#: the files the page references; nothing else of the package is served.
_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def add_docs(app: FastAPI, openapi_url: str) -> None:
    """Swagger UI at ``/docs`` with every asset from the fleet itself (create the app with ``docs_url=None``)."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(f"{ASSETS}/{{name}}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in _FILES:
            raise HTTPException(404, f"no docs file {name}")
        return FileResponse(
            str(swagger_ui_path / name),
            media_type=_FILES[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )
