"""Adapter versions: metadata and download of the PEFT directory as a deterministic tar.gz."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse

from unlearnd.api import schemas, views
from unlearnd.api.blobs import BlobStore
from unlearnd.api.deps import ADAPTERS_READ, AdapterDep, DbSession, scope
from unlearnd.api.errors import BlobMissing, ErrorOut

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], dependencies=[scope(ADAPTERS_READ)])


@router.get("/{id}", response_model=schemas.AdapterOut)
def get_adapter(adapter: AdapterDep) -> schemas.AdapterOut:
    return views.adapter_out(adapter)


@router.get(
    "/{id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}}},
        304: {"description": "Not modified (ETag)"},
        410: {"model": ErrorOut, "description": "The tarball is missing from the blob store"},
    },
)
def download(
    adapter: AdapterDep,
    session: DbSession,
    request: Request,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """`X-Adapter-SHA256` (also the ETag) is the sha256 of the tarball: verify it before loading."""
    etag = f'"{adapter.sha256}"'
    headers = {"ETag": etag, "X-Adapter-SHA256": adapter.sha256}
    session.close()  # do not hold a database transaction open while the file streams
    if if_none_match and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    blobs: BlobStore = request.app.state.blobs
    path = blobs.path(adapter.storage_uri)
    if not path.is_file():
        raise BlobMissing(f"the tarball of adapter {adapter.id} is missing from the blob store")
    filename = f"adapter-{adapter.model_id}-v{adapter.version}.tar.gz"
    return FileResponse(path, media_type="application/gzip", filename=filename, headers=headers)
