"""JUnit XML for CI: one testsuite per scenario, one testcase per expectation. An inconclusive run's
failed expectations are ``skipped`` with the lag figures (the host could not keep up), not failures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from twin.scenario.result import ScenarioResult


def junit_xml(results: Sequence[ScenarioResult]) -> str:
    root = ET.Element("testsuites", name="propeller scenarios")
    total = failures = errors = skipped = 0
    for res in results:
        s = res.scenario
        suite = ET.SubElement(root, "testsuite", name=s.name, time=f"{res.wall_s:.3f}")
        props = ET.SubElement(suite, "properties")
        for key, value in (("seed", s.seed), ("source", s.source), ("duration_s", s.duration_s)):
            ET.SubElement(props, "property", name=key, value=str(value))
        n_fail = n_err = n_skip = 0
        unsure = res.inconclusive
        if res.error is not None:
            case = ET.SubElement(suite, "testcase", classname=f"scenario.{s.name}", name="run", time="0")
            ET.SubElement(case, "error", message=res.error, type="RunnerError").text = res.error
            n_err += 1
        for v in res.verdicts:
            case = ET.SubElement(suite, "testcase", classname=f"scenario.{s.name}", name=v.name, time="0")
            if not v.passed and unsure:
                message = f"inconclusive: {unsure}"
                ET.SubElement(case, "skipped", message=message).text = f"{message}\n{v.detail}"
                n_skip += 1
            elif not v.passed:
                ET.SubElement(case, "failure", message=v.detail, type="ExpectationFailed").text = v.detail
                n_fail += 1
            else:
                ET.SubElement(case, "system-out").text = v.detail
        cases = len(res.verdicts) + (res.error is not None)
        suite.set("tests", str(cases))
        suite.set("failures", str(n_fail))
        suite.set("errors", str(n_err))
        suite.set("skipped", str(n_skip))
        total, failures, errors, skipped = total + cases, failures + n_fail, errors + n_err, skipped + n_skip
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    root.set("skipped", str(skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(results: Sequence[ScenarioResult], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(junit_xml(results), encoding="utf-8")
    return p
