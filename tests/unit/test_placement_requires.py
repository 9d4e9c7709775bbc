"""Placement constraints from `requires`: a TEE and tags the proplet must announce."""

from __future__ import annotations

import pytest

from orchestrator.core import placement
from orchestrator.core.errors import ValidationError
from orchestrator.core.model import Proplet, PropletMetadata
from orchestrator.core.validation import build_task


def task(**spec: object):  # type: ignore[no-untyped-def]
    return build_task({"name": "add", **spec}, lambda: "t-1")


def test_requires_tee_and_tags_filter_the_candidates() -> None:
    plain = Proplet("plain", alive=True, metadata=PropletMetadata(tags=["gpu"]))
    tdx = Proplet("tdx", alive=True, metadata=PropletMetadata(tee=True, tee_type="tdx", tags=["eu"]))
    needs_tee = task(requires={"tee": True})
    assert placement.fits(needs_tee, tdx) == ""
    assert "runs in no TEE" in placement.fits(needs_tee, plain)
    in_eu = task(metadata={"requires": {"tags": ["eu"]}})
    assert placement.fits(in_eu, tdx) == "" and "lacks tags ['eu']" in placement.fits(in_eu, plain)
    choice = placement.LeastLoaded().choose(needs_tee, [plain])
    assert choice.proplet is None and "runs in no TEE" in choice.reason
    assert task().metadata == {}  # nothing required, nothing stored


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"requires": {"tee": "yes"}}, "requires.tee"),
        ({"requires": {"tags": "eu"}}, "requires.tags"),
        ({"requires": {"sgx": True}}, "requires.sgx"),
        ({"requires": []}, "requires"),
        ({"metadata": {"requires": {"tee": 1}}}, "metadata.requires.tee"),
    ],
)
def test_bad_requires_names_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        task(**spec)
    assert err.value.field == field
