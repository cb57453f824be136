"""scripts/audit.py: pip-audit's report, the project-JSON fallback and the exit codes, on fake answers."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from tests.serving import REPO_ROOT


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", REPO_ROOT / "scripts" / "audit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


audit = load_audit()
Package = audit.Package

VULN = {
    "id": "GHSA-aaaa-bbbb-cccc",
    "aliases": ["CVE-2026-0001"],
    "fixed_in": ["2.1"],
    "withdrawn": None,
}
WITHDRAWN = {"id": "PYSEC-2026-9", "aliases": [], "fixed_in": [], "withdrawn": "2026-01-01T00:00:00Z"}


def project(latest: str, vulnerabilities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"info": {"version": latest}, "vulnerabilities": vulnerabilities or []}


def fake_fetch(answers: dict[str, Any], calls: list[str] | None = None) -> Callable[[str], dict[str, Any]]:
    """A stand-in for fetch_project_json: a dict answers, an exception (class or instance) is raised."""

    def fetch(name: str) -> dict[str, Any]:
        if calls is not None:
            calls.append(name)
        answer = answers[name]
        if isinstance(answer, Exception) or (isinstance(answer, type) and issubclass(answer, Exception)):
            raise answer
        return dict(answer)

    return fetch


def pip_audit_json(*dependencies: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(dependencies), "fixes": []}


SKIPPED = "Dependency not found on PyPI and could not be audited: {} ({})"


def test_pip_audit_report_is_parsed_into_findings_and_skips() -> None:
    finding = {"id": "PYSEC-1", "fix_versions": ["9.0.1"], "aliases": ["CVE-1"]}
    report = pip_audit_json(
        {"name": "Pillow", "version": "9.0.0", "vulns": [finding]},
        {"name": "fastapi", "version": "0.165.0", "vulns": []},
        {"name": "torch", "skip_reason": SKIPPED.format("torch", "2.13.0")},
    )
    audited, skipped = audit.parse_pip_audit(report)
    assert audited["pillow"] == [
        audit.Vulnerability("pillow", "9.0.0", "PYSEC-1", ("CVE-1",), ("9.0.1",), audit.PIP_AUDIT)
    ]
    assert audited["fastapi"] == []
    assert set(skipped) == {"torch"}


def test_what_pip_audit_audited_is_not_fetched_again() -> None:
    calls: list[str] = []
    report = audit.audit(
        [Package("fastapi", "0.165.0"), Package("torch", "2.13.0")],
        pip_audit_json(
            {"name": "fastapi", "version": "0.165.0", "vulns": []},
            {"name": "torch", "skip_reason": SKIPPED.format("torch", "2.13.0")},
        ),
        fake_fetch({"torch": project("2.13.0")}, calls),
    )
    assert calls == ["torch"]
    assert report.audited == {"fastapi": audit.PIP_AUDIT, "torch": audit.PROJECT_JSON}
    assert not report.not_audited
    assert audit.exit_code(report, allow_incomplete=False) == 0


def test_a_package_at_its_latest_release_is_audited_by_the_project_json() -> None:
    report = audit.audit(
        [Package("pillow", "13.0.0")], None, fake_fetch({"pillow": project("13.0.0", [VULN, WITHDRAWN])})
    )
    assert report.audited == {"pillow": audit.PROJECT_JSON}
    assert report.vulnerabilities == [
        audit.Vulnerability(
            "pillow", "13.0.0", "GHSA-aaaa-bbbb-cccc", ("CVE-2026-0001",), ("2.1",), audit.PROJECT_JSON
        )
    ]  # the withdrawn advisory is not a finding
    assert audit.exit_code(report, allow_incomplete=False) == 1
    assert audit.exit_code(report, allow_incomplete=True) == 1  # a finding fails even an incomplete audit


def test_a_local_build_label_still_matches_the_public_release() -> None:
    report = audit.audit([Package("torch", "2.15.0+cpu")], None, fake_fetch({"torch": project("2.15.0")}))
    assert report.audited == {"torch": audit.PROJECT_JSON}


def test_an_older_release_is_reported_as_not_audited_never_as_clean() -> None:
    # The latest release's list is empty, which says nothing about 2.13.0.
    report = audit.audit([Package("torch", "2.13.0+cpu")], None, fake_fetch({"torch": project("2.15.0")}))
    assert not report.audited
    assert not report.vulnerabilities
    assert "installed 2.13.0+cpu, latest 2.15.0" in report.not_audited["torch"]
    assert audit.exit_code(report, allow_incomplete=False) == 2
    assert audit.exit_code(report, allow_incomplete=True) == 0
    assert "torch: installed 2.13.0+cpu, latest 2.15.0" in audit.render(report)


def test_unknown_projects_and_invalid_versions_are_not_audited() -> None:
    report = audit.audit(
        [Package("in-house", "1.0"), Package("odd", "1.0")],
        None,
        fake_fetch({"in-house": audit.ProjectNotFound("in-house"), "odd": project("not a version")}),
    )
    assert report.not_audited["in-house"] == "not on PyPI"
    assert "not a valid version" in report.not_audited["odd"]


def test_once_pypi_is_unreachable_the_rest_is_listed_without_waiting_on_each() -> None:
    calls: list[str] = []
    packages = [Package("anyio", "4.16.0"), Package("numpy", "2.4.6"), Package("torch", "2.13.0")]
    report = audit.audit(packages, None, fake_fetch({"anyio": audit.Unreachable("no route")}, calls))
    assert calls == ["anyio"]
    assert set(report.not_audited) == {"anyio", "numpy", "torch"}
    assert all(
        reason == "PyPI unreachable (no route, asking for anyio)" for reason in report.not_audited.values()
    )
    assert audit.exit_code(report, allow_incomplete=True) == 0  # offline CI stays green …
    assert audit.exit_code(report, allow_incomplete=False) == 2  # … but the audit says it is incomplete


def test_an_assessed_finding_can_be_ignored_by_id_or_alias() -> None:
    report = audit.audit(
        [Package("pillow", "13.0.0")], None, fake_fetch({"pillow": project("13.0.0", [VULN])})
    )
    audit.apply_ignores(report, ["CVE-2026-0001"])
    assert not report.vulnerabilities
    assert [v.id for v in report.ignored] == ["GHSA-aaaa-bbbb-cccc"]
    assert audit.exit_code(report, allow_incomplete=False) == 0
    assert "ignored (--ignore-vuln): pillow 13.0.0: GHSA-aaaa-bbbb-cccc" in audit.render(report)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (urllib.error.HTTPError("u", 404, "Not Found", None, None), audit.ProjectNotFound),  # type: ignore[arg-type]
        (urllib.error.HTTPError("u", 503, "Unavailable", None, None), audit.Unreachable),  # type: ignore[arg-type]
        (urllib.error.URLError("Name or service not known"), audit.Unreachable),
        (TimeoutError("timed out"), audit.Unreachable),
    ],
)
def test_fetch_maps_network_answers(
    monkeypatch: pytest.MonkeyPatch, error: Exception, expected: type[Exception]
) -> None:
    def urlopen(url: str, timeout: float) -> Any:
        raise error

    monkeypatch.setattr(audit.urllib.request, "urlopen", urlopen)
    with pytest.raises(expected):
        audit.fetch_project_json("numpy")


def test_fetch_reads_the_project_json(monkeypatch: pytest.MonkeyPatch) -> None:
    urls: list[str] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(json.dumps(project("2.5.5")).encode())

    monkeypatch.setattr(audit.urllib.request, "urlopen", urlopen)
    assert audit.fetch_project_json("numpy")["info"]["version"] == "2.5.5"
    assert urls == ["https://pypi.org/pypi/numpy/json"]


@pytest.mark.parametrize(
    ("stdout", "returncode", "parsed"),
    [
        (json.dumps(pip_audit_json({"name": "a", "version": "1", "vulns": [{"id": "X"}]})), 1, True),
        ("", 1, False),  # a traceback on stderr, e.g. the vulnerability service unreachable
        ("[]", 0, False),
    ],
)
def test_pip_audit_exit_status_alone_decides_nothing(
    monkeypatch: pytest.MonkeyPatch, stdout: str, returncode: int, parsed: bool
) -> None:
    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[1:3] == ["-m", "pip_audit"]
        return subprocess.CompletedProcess(command, returncode, stdout, "ConnectionError: no route\n")

    monkeypatch.setattr(audit.subprocess, "run", run)
    report, error = audit.run_pip_audit(5)
    assert (report is not None) is parsed
    assert (error is None) is parsed


def test_main_prints_the_summary_and_returns_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = [Package("numpy", "2.5.5"), Package("torch", "2.13.0")]
    monkeypatch.setattr(audit, "installed_packages", lambda: (installed, ["glimpse"]))
    monkeypatch.setattr(audit, "run_pip_audit", lambda timeout_s: (None, "pip-audit failed: offline"))
    answers = {"numpy": project("2.5.5"), "torch": project("2.15.0")}
    monkeypatch.setattr(audit, "fetch_project_json", lambda name, timeout_s: answers[name])
    assert audit.main([]) == 2
    assert audit.main(["--allow-incomplete"]) == 0
    out = capsys.readouterr().out
    assert "audited: 1 packages (0 by pip-audit, 1 by the PyPI project JSON" in out
    assert "NOT audited: 1 packages\n  torch: installed 2.13.0, latest 2.15.0" in out
    assert "INCOMPLETE: 1 packages not audited\n" in out
    assert "INCOMPLETE: 1 packages not audited (allowed: --allow-incomplete)" in out
    assert "local, not PyPI packages (this project): glimpse" in out


def test_main_fails_on_a_finding_even_when_incompleteness_is_allowed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = [Package("pillow", "13.0.0"), Package("torch", "2.13.0")]
    monkeypatch.setattr(audit, "installed_packages", lambda: (installed, []))
    monkeypatch.setattr(audit, "run_pip_audit", lambda timeout_s: (None, "pip-audit failed: offline"))
    answers = {"pillow": project("13.0.0", [VULN]), "torch": project("2.15.0")}
    monkeypatch.setattr(audit, "fetch_project_json", lambda name, timeout_s: answers[name])
    assert audit.main(["--allow-incomplete"]) == 1
    out = capsys.readouterr().out
    assert "pillow 13.0.0: GHSA-aaaa-bbbb-cccc (CVE-2026-0001); fixed in 2.1 [PyPI project JSON]" in out
    assert out.endswith("FAILED: 1 known vulnerabilities\n")
    monkeypatch.setattr(audit, "installed_packages", lambda: (installed[:1], []))
    assert audit.main(["--ignore-vuln", "GHSA-aaaa-bbbb-cccc"]) == 0
    assert capsys.readouterr().out.endswith("OK: every package audited, no known vulnerability\n")


def test_this_project_is_local_never_looked_up_on_pypi() -> None:
    packages, local = audit.installed_packages()
    names = {package.name for package in packages}
    assert "glimpse" in local  # PyPI's "glimpse" is another project
    assert "glimpse" not in names
    assert {"torch", "fastapi", "pillow", "pip-audit"} <= names
