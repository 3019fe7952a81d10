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

import re
from collections.abc import Mapping

_EMPTY: Mapping[bytes, object] = {}

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
#: free text: kept, but cleaned like a descriptor (:func:`clean_text`: kept only when
#: made of safe vocabulary, else emptied).
CLEANED_TEXT_KEYWORDS = frozenset({"ContentDescription", "SegmentDescription"})

#: Private attributes retained under Retain Safe Private (E.3.10): ``(creator, element)``
#: with ``element`` the low byte of the element number (``0xgggg,xxEE`` -> ``0xEE``)
#: and the group folded in as ``group << 8 | EE``.  Empty by default: a trial lists
#: what its scanners' safe private attributes are in the recipe (``safe_private``).
SAFE_PRIVATE: frozenset[tuple[str, int]] = frozenset()


# -- cleaning free text (the C action on text) ------------------------------------------------
#
# PS3.15 E.3.5 asks that descriptors be "cleaned" of identifying information, which a
# program cannot recognise in free text reliably.  CIAMS therefore keeps a cleaned
# value only when every token of it is known to be harmless: a word of the imaging /
# anatomy / protocol vocabulary below, a short number, a number with a unit, or a
# single letter.  Any other value is replaced by an empty value, whole (no partial
# edits: what is left of a sentence after removing the unknown words can still
# identify).  The list is curated by hand.

_VOCABULARY_TEXT = """
2D 3D 4D MPR MIP MINIP VR VRT SSD CPR AVG AVERAGE SUM ISO ISOTROPIC RECON RECONS
RECONSTRUCTION RECONSTRUCTED REFORMAT REFORMATS REFORMATTED REF MULTIPLANAR
AX AXI AXIAL TRA TRANS TRANSVERSE SAG SAGITTAL COR CORONAL OBL OBLIQUE DOUBLE
CT CTA CTP CTU CTV MR MRI MRA MRV MRS MRCP PET SPECT NM US XA RF DX CR MG MAMMO
DXA DEXA OT SC PT RT RTSTRUCT RTDOSE RTPLAN SEG SR PR KO REG FUSION FUSED HYBRID
PETCT PETMR SPECTCT ECHO DOPPLER DUPLEX ANGIO ANGIOGRAM ANGIOGRAPHY
ANGIOGRAPHIC VENOGRAM VENOGRAPHY PERFUSION PERF PERFUS PWI DSC DCE ASL BOLD
FMRI DTI DWI ADC EADC TRACE TRACEW DIFFUSION TENSOR FA MD SWI SWAN SUSCEPTIBILITY
T1 T1W T1WI T2 T2W T2WI T2STAR PD PDW FLAIR STIR TIRM DIR PSIR IR SE FSE TSE
GRE SPGR FSPGR FFE TFE EPI SSFSE HASTE HASTEIRM TRUFI FIESTA BFFE SSFP CISS SPACE
CUBE VISTA MPRAGE MPRAGE2 BRAVO VIBE LAVA THRIVE STARVIBE DIXON IDEAL MDIXON
FATSAT FS SPIR SPAIR CHESS WATER FAT INPHASE OUTPHASE IN OUT OPP OPPOSED PHASE
MAG MAGNITUDE REAL IMAGINARY MAP MAPS MAPPING QUANT QUANTITATIVE T1MAP T2MAP
T2STARMAP R2 R2STAR PDFF ELASTOGRAPHY MRE TOF PC PCA VENC CINE SCOUT SURVEY
LOCALIZER LOCALISER LOC TOPOGRAM TOPO SCANOGRAM PILOT TRI PLANE PLANAR
CALIBRATION CAL ASSET SENSE GRAPPA IPAT CSENSE ARC HYPERSENSE COMPRESSED
NAV NAVIGATOR BH BREATH HOLD FREE BREATHING GATED GATING TRIGGERED TRIG ECG EKG
RESP RESPIRATORY CARDIAC PROSPECTIVE RETROSPECTIVE BLADE PROPELLER RADIAL
SPIRAL HELICAL SEQUENTIAL SEQ VOLUME VOL VOLUMETRIC THIN THICK SLAB SLICE SLICES
SECTION SECTIONS MULTISLICE MULTI SINGLE SHOT SS FAST TURBO ULTRAFAST
DYNAMIC DYN DELAY DELAYED EARLY LATE ARTERIAL VENOUS PORTAL PORTALVENOUS PV
NEPHROGRAPHIC EXCRETORY EQUILIBRIUM HEPATIC PHASE PHASES PANCREATIC MULTIPHASE
TRIPHASIC BIPHASIC WASHOUT WASH PRE POST PREC POSTC PRECONTRAST POSTCONTRAST
CONTRAST NONCONTRAST NON NC CE GD GAD GADO GADOLINIUM IODINE IV ORAL RECTAL
BOLUS TRACKING TEST TIMING INJECTION WITH WITHOUT W WO AND OR OF THE TO FOR ON AT
BY PLUS NO VS PER FROM ONLY ALL BOTH EACH
HEAD BRAIN SKULL CRANIAL CRANIUM FACE FACIAL ORBIT ORBITS SINUS SINUSES
PARANASAL TEMPORAL PITUITARY SELLA IAC IACS MASTOID INNER EAR EARS NECK
CERVICAL THYROID LARYNX PHARYNX NASOPHARYNX OROPHARYNX SOFT TISSUE TISSUES
CHEST THORAX THORACIC LUNG LUNGS PULMONARY PE HEART CORONARY CORONARIES CARDIO
AORTA AORTIC ARCH CAROTID CAROTIDS VERTEBRAL CIRCLE WILLIS COW VESSEL VESSELS
VASCULAR ARTERY ARTERIES VEIN VEINS VENOUS RUNOFF RUN OFF ABDOMEN ABDOMINAL ABD
ABDO PELVIS PELVIC ABDPEL LIVER HEPATIC SPLEEN PANCREAS KIDNEY KIDNEYS RENAL
ADRENAL ADRENALS BLADDER GALLBLADDER BILIARY BOWEL COLON ENTEROGRAPHY
ENTEROCLYSIS COLONOGRAPHY UROGRAPHY UROGRAM PROSTATE UTERUS OVARY OVARIES
RECTUM RECTAL ANAL SPINE SPINAL CSPINE TSPINE LSPINE WHOLE WB BODY TOTAL
LUMBAR SACRUM SACRAL COCCYX SI CORD DISC DISCS EXTREMITY EXTREMITIES LIMB
UPPER LOWER SHOULDER SHOULDERS HUMERUS ELBOW FOREARM WRIST HAND HANDS FINGER
HIP HIPS FEMUR THIGH KNEE KNEES LEG LEGS TIBIA FIBULA ANKLE FOOT FEET TOE
JOINT JOINTS ARTHRO ARTHROGRAM BREAST BREASTS AXILLA AXILLARY MAMMARY
BONE BONES MARROW MUSCLE MUSCLES LYMPH NODE NODES SKIN SCALP PAROTID
STANDARD STD ROUTINE PROTOCOL PROTOCOLS SERIES STUDY EXAM EXAMINATION IMAGE
IMAGES IMAGING SCAN SCANS ACQ ACQUISITION SEQUENCE DERIVED PRIMARY ORIGINAL
SECONDARY SUMMARY REPORT REPORTS DOSE DOSIMETRY LOW HIGH ULTRA ULTRALOW LD HD
HR QUALITY RES RESOLUTION SHARP SMOOTH SOFT MEDIUM DETAIL DETAILED BONE LUNG
MEDIASTINUM MEDIASTINAL WINDOW WINDOWS WIDE NARROW KERNEL FILTER ITERATIVE
IR ASIR ADMIRE SAFIRE IDOSE IMR AIDR DLIR FBP MBIR VEO IR3D AIDR3D
DE DECT DUAL ENERGY SPECTRAL MONO MONOENERGETIC KEV VNC VMI IODINE MAP
CALCIUM SCORE SCORING CACS AGATSTON ANGIO CARDIAC FUNCTION FUNCTIONAL
STRESS REST STATIC DYNAMIC GATED UNGATED EMISSION TRANSMISSION ATTENUATION
CORRECTED CORRECTION AC NAC CTAC MAC OSEM TOF PSF FDG PSMA FLT FET DOTATATE
CHOLINE AMYLOID FBB FBP PIB TAU FLORBETAPIR FLORBETABEN FLUTEMETAMOL
RUBIDIUM RB82 AMMONIA NH3 TC99M TC SESTAMIBI TETROFOSMIN MDP HMPAO DATSCAN
I123 I131 F18 GA68 C11 O15 N13 CU64 ZR89 LU177 Y90 SUV SUVBW SUVLBM BQML
EARLY LATE MIN MINUTE MINUTES HR HOURS SEC SECONDS FRAME FRAMES
LEFT RIGHT LT RT BILATERAL BILAT BIL UNILATERAL MIDLINE ANTERIOR ANT POSTERIOR
POST SUPERIOR SUP INFERIOR INF MEDIAL LATERAL LAT PROXIMAL DISTAL CENTRAL
PERIPHERAL AP PA LL RL LR SI IS HF FH PRONE SUPINE DECUBITUS FEET FIRST HEADFIRST
FEETFIRST OBLIQUES VIEW VIEWS CC MLO ML XCCL SPOT MAG TOMO TOMOSYNTHESIS DBT
CBCT CONE BEAM FLUORO FLUOROSCOPY DSA ROTATIONAL SUBTRACTION SUBTRACTED SUB
MASK NATIVE FILL FILLING INTERVENTIONAL BIOPSY GUIDED GUIDANCE DRAINAGE
ABLATION PLANNING PLAN TREATMENT SIMULATION SIM VERIFICATION SETUP CBCT KV MV
PORTAL DRR ISOCENTER ISOCENTRE BEAM BEAMS FIELD FIELDS ARC ARCS VMAT IMRT
IGRT SBRT SRS STEREOTACTIC BOOST TARGET GTV CTV PTV ITV OAR ROI ROIS
STRUCTURE STRUCTURES CONTOUR CONTOURS SEGMENTATION LESION LESIONS TUMOR
TUMOUR NODULE NODULES MASS MASSES METASTASIS METASTASES METS BASELINE
FOLLOW FOLLOWUP FU SCREENING STAGING RESTAGING RESPONSE ASSESSMENT
RECIST TIMEPOINT VISIT CYCLE WEEK MONTH DAY SCREEN TP BL EOT EOS UNSCHEDULED
CLINICAL TRIAL RESEARCH QC QA PHANTOM TESTING SERVICE CHECK
NORMAL ABNORMAL NEG POS POSITIVE NEGATIVE RIGHT LEFT CENTER CENTRE MID
PARTIAL FULL COMPLETE INCOMPLETE REPEAT REPEATED RETAKE REDO ADDITIONAL EXTRA
CORRECTED NEW OLD PRIOR CURRENT CONTROL CONTROLS NULL NONE NA UNKNOWN
KNOWN DEFAULT CUSTOM USER AUTO AUTOMATIC MANUAL BEST SELECTED KEY
COIL COILS HEADCOIL BODYCOIL SURFACE FLEX ARRAY PHASED NEUROVASCULAR
MOTION CORRECT MOCO FILTERED UNFILTERED NORM NORMALIZED NORMALISED DIS2D DIS3D
SUBTRACT ORIG PROCESSED RAW UNPROCESSED PROCESSING DERIVATION COMPOSED COMPOSITE
COLOR COLOUR GRAY GREY FUSED OVERLAY SCREENSHOT SNAPSHOT CAPTURE
PRESENTATION DISPLAY SAVE SAVED SCREENSAVE EXPORT EXPORTED SEND SENT
ACUTE CHRONIC STROKE TRAUMA ONCOLOGY NEURO MSK BODY CHEST ABDO PEDS PEDIATRIC
PAEDIATRIC ADULT INFANT CHILD EMERGENCY ER ED ICU INPATIENT OUTPATIENT
STAT URGENT ELECTIVE PRIORITY
COERCE CORRECT
"""

#: Upper-cased words a cleaned text value may consist of (with numbers and units).
SAFE_VOCABULARY = frozenset(_VOCABULARY_TEXT.split())

#: Units (and suffixes) allowed right after a number: ``2MM``, ``120KV``, ``3D``, ``1ST``.
_UNITS_TEXT = """
MM CM M UM NM KV KVP MV MA MAS S MS SEC MIN H HR HRS D DAY DAYS W WK WKS MO Y YR YRS ML
L MG G KG MCG MMOL MBQ GBQ KBQ MCI CI T G HZ KHZ MHZ DEG X D ST ND RD TH KEV MEV SL
SLICE SLICES MIN PCT P PX PERCENT CC
"""
SAFE_UNITS = frozenset(_UNITS_TEXT.split())


def _token_safe(token: str, vocabulary: frozenset[str]) -> bool:
    """Whether one token (a run of letters and digits, upper-cased) is harmless."""
    if token in vocabulary:
        return True
    if token.isdigit():
        return len(token) <= 4  # longer numbers may be identifiers (MRN, accession)
    if len(token) == 1:
        return token.isascii()  # L, R, A, P, W (for W/O), ...
    if token.isascii():
        digits = len(token) - len(token.lstrip("0123456789"))
        if 0 < digits <= 4 and token[digits:] in SAFE_UNITS:
            return True  # a number with a unit
        stem = token.rstrip("0123456789")
        if stem in _NUMBERED and 0 < len(token) - len(stem) <= (4 if stem == "B" else 2):
            return True  # B1000, C5, T12, L4, S1, ECHO2, PHASE3
    return False


#: Words that may carry a number (b-values, vertebrae, echoes, phases, series parts).
_NUMBERED_TEXT = """
B C T L S TE TR TI TA FA ECHO PHASE PART SERIES SE IMG IMAGE VOL RUN SCAN ACQ BH FRAME
SLAB VIEW DYN P E TP V CYCLE C1D DAY WEEK WK VISIT MONTH CTV PTV GTV ITV BOOST FX ARC
BEAM FIELD
"""
_NUMBERED = frozenset(_NUMBERED_TEXT.split())
_TOKEN = re.compile(r"[^\W_]+")
#: Dates, long numbers and e-mail addresses: a value containing any is not kept.
CLEAN_PATTERNS = re.compile(
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b|\b\d{5,}\b"
    r"|[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+"
)


def clean_text(
    text: str,
    identifiers: Mapping[bytes, object] = _EMPTY,
    vocabulary: frozenset[str] = SAFE_VOCABULARY,
) -> str:
    """The C action on a text value: ``text`` unchanged when it is made only of safe
    tokens (see :data:`SAFE_VOCABULARY`), else ``""``.

    A value holding a date, a number of 5+ digits, an e-mail address or a word of a
    source identifier (``identifiers``: lower-cased tokens, see
    :func:`ciams.deid.leaks.identifier_tokens`) is never kept, even if every word of
    it is in the vocabulary.

    >>> clean_text("AX T1 POST GD"), clean_text("PORTAL VENOUS 2mm"), clean_text("Dr Smith")
    ('AX T1 POST GD', 'PORTAL VENOUS 2mm', '')
    """
    if not text:
        return text
    if CLEAN_PATTERNS.search(text):
        return ""
    tokens = _TOKEN.findall(text.upper())
    if not all(_token_safe(tok, vocabulary) for tok in tokens):
        return ""
    if identifiers:
        low = text.lower()
        for ident in identifiers:
            word = ident.decode("utf-8", "ignore")
            if word and word in low and _has_word(low, word):
                return ""
    return text


def _has_word(low: str, word: str) -> bool:
    start = 0
    while (i := low.find(word, start)) >= 0:
        j = i + len(word)
        if (i == 0 or not low[i - 1].isalnum()) and (j == len(low) or not low[j].isalnum()):
            return True
        start = i + 1
    return False
