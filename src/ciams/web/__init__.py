"""Web domain: the ASGI application (DICOMweb now; REST API and UI later)."""

from ciams.web.app import create_app

__all__ = ["create_app"]
