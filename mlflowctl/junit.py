"""A DAG run as a JUnit XML report: one test case per task, failures carry their log tail; and
`mlwf parse` as one: one test case per DAG file, a file that does not import is a <failure>.

CI systems (GitLab, Jenkins, GitHub test reporters) display this format natively. A task
that failed is a <failure>; one that never ran because an upstream task failed, or was
skipped, is <skipped> with the reason; every other state that is not success is an <error>
(after a wait that gave up, type "unfinished"). Log text is made XML-safe (ANSI escapes
dropped, other control characters shown as \\xNN) so strict parsers accept every report, and
the file is replaced atomically: a CI job never reads half a report.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflowctl.dagcheck.runner import ParseReport
    from mlflowctl.runs import RunSnapshot, TaskFailure


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without terminal escapes, every character XML 1.0 cannot hold shown as \\xNN."""
    return _NOT_XML.sub(lambda match: f"\\x{ord(match.group()):02x}", _ANSI.sub("", text))


def junit_xml(snapshot: RunSnapshot, failures: list[TaskFailure], *, timed_out: bool = False) -> str:
    run = snapshot.run
    tails = {f.task.task_id: f.log_tail for f in failures}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suite = ET.Element("testsuite", name=run.dag_id, id=run.run_id)
    if run.start_date:
        suite.set("timestamp", run.start_date.isoformat())
    for task in snapshot.tasks:
        counts["tests"] += 1
        name = task.task_id if task.map_index < 0 else f"{task.task_id}[{task.map_index}]"
        case = ET.SubElement(suite, "testcase", classname=run.dag_id, name=name, time=f"{task.duration or 0:.3f}")
        if task.state == "success":
            continue
        if task.state == "failed":
            counts["failures"] += 1
            failure = ET.SubElement(case, "failure", message=f"task {name} failed (try {task.try_number})", type="failed")
            failure.text = xml_safe("\n".join(tails.get(task.task_id, [])))
        elif task.state in ("upstream_failed", "skipped", "removed"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=task.state)
        elif timed_out:
            counts["errors"] += 1
            ET.SubElement(
                case, "error", message=f"task {name} unfinished ({task.state or 'not started'}) when the wait gave up",
                type="unfinished",
            )
        else:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=f"task {name} ended the run in state {task.state}", type=str(task.state))
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{run.duration or snapshot.elapsed:.3f}")
    return _document(f"mlwf {run.dag_id}", suite, counts)


def parse_junit_xml(report: ParseReport) -> str:
    counts = {"tests": len(report.files), "failures": len(report.problems), "errors": 0, "skipped": 0}
    suite = ET.Element("testsuite", name="mlwf parse", time=f"{report.seconds:.3f}")
    for parsed in report.files:
        case = ET.SubElement(suite, "testcase", classname="dags", name=parsed.file, time=f"{parsed.seconds:.3f}")
        if parsed.error:
            failure = ET.SubElement(case, "failure", message=xml_safe(parsed.error.last), type=parsed.error.kind)
            failure.text = xml_safe(parsed.error.trace)
        if parsed.slow:
            out = ET.SubElement(case, "system-out")
            out.text = f"slow: {parsed.seconds:.1f} s of the {parsed.timeout:g} s import timeout"
    for key, value in counts.items():
        suite.set(key, str(value))
    return _document("mlwf parse", suite, counts)


def _document(name: str, suite: ET.Element, counts: dict) -> str:
    root = ET.Element("testsuites", name=name, **{k: str(v) for k, v in counts.items()})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, snapshot: RunSnapshot, failures: list[TaskFailure], *, timed_out: bool = False) -> None:
    write_report(path, junit_xml(snapshot, failures, timed_out=timed_out))


def write_report(path: Path, xml: str) -> None:
    """Replace `path` atomically: a CI job never reads half a report."""
    from mlflowctl.state import write_durably

    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, xml, mode=0o644)
