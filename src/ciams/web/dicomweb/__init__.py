"""DICOMweb (PS3.18): STOW-RS, QIDO-RS and WADO-RS on the archive, under ``/dicom-web``."""

from __future__ import annotations

from fastapi import APIRouter

from ciams.archive import Archive
from ciams.config import Settings
from ciams.web.dicomweb import qido, stow, wado
from ciams.web.dicomweb.context import PREFIX, Context
from ciams.web.security import WebAccess

__all__ = ["PREFIX", "create_router"]


def create_router(archive: Archive, settings: Settings, access: WebAccess) -> APIRouter:
    """All DICOMweb routes for ``archive``; mount it at :data:`PREFIX`."""
    ctx = Context(archive=archive, settings=settings, access=access)
    router = APIRouter()
    stow.register(router, ctx)
    # QIDO before WADO: /studies/{study}/series must not be taken for a retrieve.
    qido.register(router, ctx)
    wado.register(router, ctx)
    return router
