"""Imports every domain's models so that the metadata (and Alembic) sees all tables."""

from ciams.access import models as access_models  # noqa: F401
from ciams.archive import models as archive_models  # noqa: F401
from ciams.net import models as net_models  # noqa: F401
