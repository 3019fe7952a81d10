"""Tables generated from the DICOM standard (do not edit by hand; see ``generate.py``)."""
