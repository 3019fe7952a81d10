"""Property-based tests (hypothesis) on random datasets built from Table E.1-1."""

from __future__ import annotations

import io

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from ciams.deid import Deidentifier, check_ingest, default_recipe
from ciams.deid._standard import annex_e
from ciams.deid.profile import CLEAN, KEEP, RECURSE, SHIFT, compile_profile
from ciams.deid.synthetic import ct_series
from ciams.deid.writer import serialize

from .conftest import SECRET

RECIPE = default_recipe()
PROFILE = compile_profile(RECIPE.options)
TEXT_TAGS = sorted(
    t
    for t, (_kw, vr, *_r) in annex_e.ATTRIBUTES.items()
    if vr in ("LO", "SH", "PN", "ST", "LT", "UT") and t >> 16 not in (0, 2) and t != 0x00100020
)
VALUE = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=8, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(TEXT_TAGS), VALUE, min_size=1, max_size=25), st.booleans())
def test_random_identifying_values_never_survive(values: dict[int, str], nest: bool) -> None:
    # a value shared with a retained attribute would legitimately survive there
    values = {tag: f"{value}{i:03d}" for i, (tag, value) in enumerate(values.items())}
    ds = ct_series(1)[0]
    target: Dataset = ds
    if nest:  # put them inside a sequence that is kept and cleaned
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = "1.2.3"
        ds.SourceImageSequence = [item]
        target = item
    for tag, value in values.items():
        target.add_new(tag, annex_e.ATTRIBUTES[tag][1], value)
    data = serialize(ds)
    src = pydicom.dcmread(io.BytesIO(data))
    result = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET, verify=False).deidentify(src)
    fast = Deidentifier(RECIPE, {"MRN0001": "S-1"}, SECRET, verify=False).deidentify_bytes(data)
    assert result.data is not None
    assert fast._dataset is None  # made by the byte-level fast path ...
    assert fast.data == result.data  # ... which agrees with the dataset path
    for tag, value in values.items():
        if PROFILE.actions.get(tag) in (KEEP, RECURSE, CLEAN, SHIFT):
            continue
        assert value.encode() not in result.data, f"{tag:08X} survived"
    out = pydicom.dcmread(io.BytesIO(result.data))
    check_ingest(out, RECIPE)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.from_regex(r"1\.[1-9][0-9]{0,5}(\.[1-9][0-9]{0,8}){1,6}", fullmatch=True),
        min_size=1,
        max_size=10,
        unique=True,
    )
)
def test_uid_mapping_is_injective_and_valid(uids: list[str]) -> None:
    deid = Deidentifier(RECIPE, {}, SECRET)
    mapped = [deid.uids(u) for u in uids]
    assert len(set(mapped)) == len(uids)
    assert all(len(m) <= 64 and m.startswith("2.25.") for m in mapped)
    assert mapped == [Deidentifier(RECIPE, {}, SECRET).uids(u) for u in uids]
