"""What is known to be safe outside Table E.1-1 (the whitelist).

PS3.15 E.1.1 lets a de-identifier keep attributes that are not listed in Table
E.1-1.  CIAMS keeps such an attribute only if it is in the public data dictionary
and either has a VR that cannot carry free text (numbers, code strings, binary,
see :data:`ciams.deid.profile.NON_TEXT_SAFE_VRS`) or is one of the text attributes
listed here, which carry technique, equipment type or coded concepts.  Everything
else is removed; a recipe's ``keep`` list adds to this.

The list is curated by hand (the standard has no such table); each entry was
checked against Table E.1-1 (not listed there) and PS3.3 (technical meaning).
"""

from __future__ import annotations

#: VRs that can hold free text or dates.
TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "DA", "DT", "TM", "AE", "UR", "AS"})

SAFE_TEXT_KEYWORDS = frozenset(
    {
        # General Equipment (device type, not device identity; PS3.3 C.7.5.1)
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        # Frame of Reference / image plane / pixel presentation
        "PositionReferenceIndicator",
        "WindowCenterWidthExplanation",
        "RescaleType",
        "LUTExplanation",
        "LossyImageCompressionMethod",
        # Code Sequence Macro (PS3.3 Table 8.8-1): coded concepts, not free text
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "MappingResource",
        "MappingResourceName",
        "ContextGroupVersion",
        "ContextGroupLocalVersion",
        "ContextGroupExtensionFlag",
        "CodingSchemeName",
        "CodingSchemeResponsibleOrganization",
        # CT / MR / PET / US / XA acquisition technique
        "ConvolutionKernel",
        "FilterType",
        "ReconstructionMethod",
        "SequenceName",
        "PulseSequenceName",
        "ReceiveCoilName",
        "TransmitCoilName",
        "ImagedNucleus",
        "ReceiveCoilManufacturerName",
        "TransducerData",
        "ProcessingFunction",
        "ContrastBolusRoute",
        "Radiopharmaceutical",
        "RadiopharmaceuticalRoute",
        "DetectorManufacturerName",
        "DetectorManufacturerModelName",
        "CollimatorGridName",
        "AcquisitionDeviceProcessingCode",
        "DimensionDescriptionLabel",
        "FunctionalGroupPrivateCreator",
        "DimensionIndexPrivateCreator",
        "PrivateCreatorReference",
        "MeasurementUnitsCodeSequence",
        "TypeOfFilters",
        "ColorSpace",
        "ReconstructionAlgorithm",
        "DataCollectionDiameter",
        "SpecificCharacterSet",
        # Segmentation (PS3.3 C.8.20.4): labels of segmented structures and algorithms
        "SegmentLabel",
        "SegmentAlgorithmName",
        "ContentLabel",
        "AlgorithmName",
        "AlgorithmVersion",
        "AlgorithmFamilyCodeSequence",
    }
)

#: Text attributes not in Table E.1-1 that IODs require (Type 1/2) and that may hold
#: free text: kept, but cleaned like a descriptor (source identifiers, dates, long
#: numbers and e-mail addresses removed).
CLEANED_TEXT_KEYWORDS = frozenset({"ContentDescription", "SegmentDescription"})

#: Private attributes retained under Retain Safe Private (E.3.10): ``(creator, element)``
#: with ``element`` the low byte of the element number (``0xgggg,xxEE`` -> ``0xEE``)
#: and the group folded in as ``group << 8 | EE``.  Empty by default: a trial lists
#: what its scanners' safe private attributes are in the recipe (``safe_private``).
SAFE_PRIVATE: frozenset[tuple[str, int]] = frozenset()
