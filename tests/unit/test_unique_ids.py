"""The collection guard against two tests with one id (tests/fixtures/unique_ids.py)."""

from __future__ import annotations

import pytest

from tests.fixtures import unique_ids

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def test_two_tests_with_one_id_stop_the_run_naming_the_id(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_collection_modifyitems(items):
            items.append(items[0])  # the same test twice, as a plugin could produce it
        """
    )
    pytester.makepyfile(test_twice="def test_once():\n    pass\n")
    result = pytester.runpytest(plugins=[unique_ids])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*1 test ids are collected more than once, e.g. test_twice.py::test_once*"])


def test_distinct_ids_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    pytester.runpytest(plugins=[unique_ids]).assert_outcomes(passed=2)
