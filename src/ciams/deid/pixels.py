"""Pixel de-identification: rule-based region blanking and OCR of burned-in text.

PS3.15 E.3.1 (Clean Pixel Data Option): identifying information burned into the
pixels is removed.  Two mechanisms, both recorded in the result:

* recipe regions, matched on modality / manufacturer / model / image size (the way
  ultrasound scanners place the patient banner at fixed positions);
* OCR with Tesseract (through pytesseract) on images that may carry text (Burned In
  Annotation YES or absent; US, SC, XA, RF, OT, ES, XC and DX/CR screen captures):
  every word box found is blacked out.

Compressed pixel data is decoded (pylibjpeg / gdcm via pydicom) and stored
uncompressed as Explicit VR Little Endian, with Photometric Interpretation and
Planar Configuration updated by the decoder; a lossy source keeps Lossy Image
Compression = 01.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ciams.deid.errors import PixelRedactionError

if TYPE_CHECKING:  # numpy and pydicom are imported when pixels are actually touched
    import numpy as np
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset

    from ciams.deid.recipe import Recipe, Region, Rule

log = logging.getLogger(__name__)

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
PAD = 3


def new_file_meta() -> FileMetaDataset:
    """An empty file meta group (PS3.10 7.1) for the writer to fill."""
    from pydicom.dataset import FileMetaDataset

    return FileMetaDataset()


def wants_ocr(ds: Dataset, recipe: Recipe, burned_in: str | None, rules: tuple[Rule, ...]) -> bool:
    """Whether the image may carry burned-in text and OCR applies."""
    if "PixelData" not in ds:
        return False
    for rule in rules:
        if rule.ocr is not None:
            return bool(rule.ocr)
    if recipe.ocr == "never":
        return False
    if recipe.ocr == "always":
        return True
    if (burned_in or "").upper() == "NO":
        return False
    modality = str(ds.get("Modality", "")).upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return True
    if modality not in recipe.ocr_modalities:
        return False
    if modality in ("DX", "CR"):
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        return "SECONDARY" in image_type or "ConversionType" in ds
    return True


def _frames(arr: np.ndarray[Any, Any], ds: Dataset) -> np.ndarray[Any, Any]:
    import numpy as np

    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if nframes == 1:
        return arr[np.newaxis, ...]
    if arr.ndim == (3 if samples == 1 else 4):
        return arr
    raise PixelRedactionError("unexpected pixel array shape")


def _to_gray8(frame: np.ndarray[Any, Any], photometric: str) -> np.ndarray[Any, Any]:
    import numpy as np

    f = frame.astype(np.float32)
    if f.ndim == 3:
        f = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(f.shape, dtype=np.uint8)
    g = (f - lo) * (255.0 / (hi - lo))
    if photometric == "MONOCHROME1":
        g = 255.0 - g
    return g.astype(np.uint8)


def ocr_boxes(
    gray: np.ndarray[Any, Any], min_confidence: float = 0.0
) -> list[tuple[int, int, int, int]]:
    """Word boxes ``(x, y, w, h)`` Tesseract finds in an 8-bit image (dark or light text)."""
    try:
        import pytesseract
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise PixelRedactionError("pytesseract is not installed") from exc
    h, w = gray.shape
    scale = 3 if max(h, w) < 400 else 2 if max(h, w) < 1200 else 1
    boxes: list[tuple[int, int, int, int]] = []
    for img_arr in (gray, 255 - gray):  # light text on dark and dark text on light
        img = Image.fromarray(img_arr)
        if scale > 1:
            img = img.resize((w * scale, h * scale), Image.Resampling.BICUBIC)
        try:
            data = pytesseract.image_to_data(
                img, config="--psm 11", output_type=pytesseract.Output.DICT
            )
        except pytesseract.TesseractNotFoundError as exc:
            raise PixelRedactionError(
                "OCR is required for this image but Tesseract is not installed",
                hint="apt-get install tesseract-ocr, or set 'pixels: {ocr: never}' in the recipe "
                "and blank regions by rule",
            ) from exc
        for i, text in enumerate(data["text"]):
            if not any(ch.isalnum() for ch in str(text)):
                continue
            if float(data["conf"][i]) < min_confidence:
                continue
            x, y = data["left"][i] // scale, data["top"][i] // scale
            bw, bh = -(-data["width"][i] // scale), -(-data["height"][i] // scale)
            boxes.append((x, y, bw, bh))
        if boxes:
            break
    return boxes


def redact(
    ds: Dataset, regions: list[tuple[str, Region]], *, ocr: bool, recipe: Recipe
) -> list[tuple[int | None, int, int, int, int, str]]:
    """Blank ``regions`` and OCR-found text in ``ds``'s pixel data, in place."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    if "PixelData" not in ds:
        return []
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        if syntax is not None and syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
        arr = ds.pixel_array.copy()
    except Exception as exc:  # decoder errors come in many types
        raise PixelRedactionError(f"the pixel data cannot be decoded: {exc}") from exc
    frames = _frames(arr, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    fill = frames.max() if photometric == "MONOCHROME1" else frames.min() if frames.size else 0
    if photometric.startswith(("RGB", "YBR")):
        fill = 0
    rows, cols = frames.shape[1], frames.shape[2]
    done: list[tuple[int | None, int, int, int, int, str]] = []
    for name, reg in regions:
        frames[:, reg.y : reg.y + reg.height, reg.x : reg.x + reg.width, ...] = fill
        done.append((None, reg.x, reg.y, reg.width, reg.height, f"rule:{name}"))
    if ocr:
        targets = range(len(frames)) if recipe.ocr_all_frames else [0]
        for fi in targets:
            for x, y, w, h in ocr_boxes(
                _to_gray8(frames[fi], photometric), recipe.ocr_min_confidence
            ):
                x0, y0 = max(0, x - PAD), max(0, y - PAD)
                x1, y1 = min(cols, x + w + PAD), min(rows, y + h + PAD)
                if recipe.ocr_all_frames:
                    frames[fi, y0:y1, x0:x1, ...] = fill
                    done.append((fi, x0, y0, x1 - x0, y1 - y0, "ocr"))
                else:  # burned-in banners sit still: blank the box in every frame
                    frames[:, y0:y1, x0:x1, ...] = fill
                    done.append((None, x0, y0, x1 - x0, y1 - y0, "ocr"))
    out = frames if int(ds.get("NumberOfFrames", 1) or 1) > 1 else frames[0]
    ds.PixelData = np.ascontiguousarray(out).tobytes()
    if syntax is None or syntax.is_compressed:
        if meta is None:
            ds.file_meta = new_file_meta()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ds["PixelData"].VR not in ("OB", "OW"):
        ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    log.debug("pixel redaction: %d boxes", len(done))
    return done
