"""The parameter reference in docs/ is the declarations, and the declarations are sound."""
from pathlib import Path

from omni_ros.ros.parameters import OMNI_NODE_PARAMETERS, check_value
from omni_ros.tools.parameter_docs import render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"


def test_docs_match_the_declarations():
    assert DOCS.read_text() == render(), \
        "docs/parameters.md is stale: python -m omni_ros.tools.parameter_docs > docs/parameters.md"


def test_every_default_lies_in_its_range_and_choices():
    for spec in OMNI_NODE_PARAMETERS:
        assert spec.description.strip(), spec.name
        assert check_value(spec, spec.default) is None, spec.name
        if spec.value_range is not None:
            low, high = spec.value_range
            assert low <= spec.default <= high, spec.name


def test_choices_refuse_other_values():
    spec = next(s for s in OMNI_NODE_PARAMETERS if s.name == "dtype")
    assert check_value(spec, "int8") is not None
