"""DICOM network domain: the DIMSE listener (Verification, Storage, Query/Retrieve)
and the registry of remote AEs.

Other domains use only what is exported here.
"""

from ciams.net.registry import AEExistsError, AERegistry, RemoteAEInfo, validate_ae_title
from ciams.net.server import DicomServer

__all__ = ["AEExistsError", "AERegistry", "DicomServer", "RemoteAEInfo", "validate_ae_title"]
