"""The export store: where export files live (a folder, or an S3-compatible bucket).

``exporter.storage.base`` is the interface every store implements; ``open_storage``
chooses the store a setting names, importing only that one's module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.storage.base import ExportStorage

__all__ = ["open_storage"]


def open_storage(where: str | Path) -> ExportStorage:
    """The export store ``where`` names: ``s3://bucket/prefix``, or a folder."""
    if isinstance(where, str) and where.startswith("s3://"):
        # Imported here: boto3 costs memory and start-up time a folder store does without.
        from exporter.storage.s3 import ObjectStorage

        return ObjectStorage(where)
    from exporter.storage.folder import FolderStorage

    return FolderStorage(Path(where))
