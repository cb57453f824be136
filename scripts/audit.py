#!/usr/bin/env python3
"""Audit the installed Python packages for known vulnerabilities, and say exactly what was audited.

1. pip-audit checks every package against PyPI's advisory data for its installed release
   (``/pypi/<name>/<version>/json``).
2. A package pip-audit had to skip (that endpoint unreachable: offline, or a package proxy answering
   404) is looked up in PyPI's project JSON, ``/pypi/<name>/json``. Its ``vulnerabilities`` list is
   for the project's LATEST release only, so it audits the package exactly when that release is the
   one installed; any other package is listed as NOT audited, by name and with the reason.

Nothing is passed silently. Exit status: 1 when a known vulnerability is found; otherwise 2 when some
package could not be audited (0 with ``--allow-incomplete``, which ``make test`` uses so that an offline
CI stays green while still printing what went unaudited); 0 when every package was audited clean.

    .venv/bin/python scripts/audit.py                       # make audit
    .venv/bin/python scripts/audit.py --ignore-vuln GHSA-…  # a finding assessed and documented
"""

# The style guide names errors for what happened, without "Error".
# ruff: noqa: N818

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
PIP_AUDIT = "pip-audit"
PROJECT_JSON = "PyPI project JSON"


class ProjectNotFound(Exception):
    """PyPI has no project of that name (404)."""


class Unreachable(Exception):
    """PyPI could not be asked (network, proxy or server error)."""


@dataclass(frozen=True)
class Package:
    name: str  # canonical (PEP 503) name
    version: str


@dataclass(frozen=True)
class Vulnerability:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()
    source: str = PIP_AUDIT


@dataclass
class Report:
    audited: dict[str, str] = field(default_factory=dict)  # package -> which source audited it
    not_audited: dict[str, str] = field(default_factory=dict)  # package -> why not
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    ignored: list[Vulnerability] = field(default_factory=list)
    local: list[str] = field(default_factory=list)  # this project, editable installs: not PyPI's
    pip_audit_skipped: dict[str, str] = field(default_factory=dict)  # package -> pip-audit's reason
    pip_audit_error: str | None = None


# -- collecting --------------------------------------------------------------------------------------
def installed_packages() -> tuple[list[Package], list[str]]:
    """Distributions of this interpreter's environment, and the local ones: this project, editables.

    This project is local however it is installed: PyPI's project of the same name is someone else's.
    """
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["name"]
    packages: dict[str, Package] = {}
    local: set[str] = set()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        direct_url = dist.read_text("direct_url.json")
        editable = bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))
        if editable or name == canonicalize_name(project):
            local.add(name)
            continue
        packages.setdefault(name, Package(name, dist.version))
    return sorted(packages.values(), key=lambda p: p.name), sorted(local)


def run_pip_audit(timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    """pip-audit's JSON report of this environment, or None and why it gave none."""
    command = [
        sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
        "--skip-editable", "--aliases", "on", "--desc", "off", "--timeout", str(int(timeout_s)),
    ]  # fmt: skip
    try:
        # Our own interpreter and fixed arguments.
        completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip-audit did not run: {exc}"
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip-audit failed (exit {completed.returncode}): {last_line}"
    if not isinstance(report, dict) or not isinstance(report.get("dependencies"), list):
        return None, "pip-audit printed JSON without a 'dependencies' list"
    return report, None


def parse_pip_audit(report: dict[str, Any]) -> tuple[dict[str, list[Vulnerability]], dict[str, str]]:
    """(vulnerabilities of each package pip-audit audited, skip reason of each package it skipped)."""
    audited: dict[str, list[Vulnerability]] = {}
    skipped: dict[str, str] = {}
    for dependency in report["dependencies"]:
        name = canonicalize_name(dependency["name"])
        if "skip_reason" in dependency:
            skipped[name] = dependency["skip_reason"]
            continue
        audited[name] = [
            Vulnerability(
                name,
                dependency["version"],
                vuln["id"],
                tuple(vuln.get("aliases", ())),
                tuple(vuln.get("fix_versions", ())),
                PIP_AUDIT,
            )
            for vuln in dependency.get("vulns", [])
        ]
    return audited, skipped


def fetch_project_json(name: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """PyPI's project JSON for ``name``.

    Raises:
        ProjectNotFound: PyPI answered 404.
        Unreachable: Any other failure to get a JSON answer.
    """
    url = PYPI_PROJECT_JSON.format(name=name)
    try:
        # A fixed https:// URL; `name` is a canonical distribution name.
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ProjectNotFound(name) from exc
        raise Unreachable(f"HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as exc:
        raise Unreachable(str(exc)) from exc
    if not isinstance(data, dict):
        raise Unreachable("the answer is not a JSON object")
    return data


# -- deciding ----------------------------------------------------------------------------------------
def from_project_json(package: Package, data: dict[str, Any]) -> list[Vulnerability] | str:
    """The package's vulnerabilities when the project JSON speaks for its version, else why it can't."""
    latest = str(data.get("info", {}).get("version", ""))
    try:
        # A local label ("2.13.0+cpu") names a build of the public release, which is what PyPI lists.
        installed_is_latest = Version(package.version).public == Version(latest).public
    except InvalidVersion:
        return f"version {package.version!r} or latest {latest!r} is not a valid version"
    if not installed_is_latest:
        return (
            f"installed {package.version}, latest {latest}: the project JSON lists advisories for "
            f"{latest} only, and the per-release JSON for {package.version} was unavailable"
        )
    vulnerabilities = data.get("vulnerabilities")
    if not isinstance(vulnerabilities, list):
        return "the project JSON has no 'vulnerabilities' list"
    return [
        Vulnerability(
            package.name,
            package.version,
            str(vuln["id"]),
            tuple(vuln.get("aliases") or ()),
            tuple(vuln.get("fixed_in") or ()),
            PROJECT_JSON,
        )
        for vuln in vulnerabilities
        if vuln.get("withdrawn") is None
    ]


def audit(
    packages: Iterable[Package],
    pip_audit_report: dict[str, Any] | None,
    fetch: Callable[[str], dict[str, Any]] = fetch_project_json,
) -> Report:
    """Combine pip-audit's report with the project-JSON fallback for what it skipped."""
    report = Report()
    packages = list(packages)
    audited, skipped = parse_pip_audit(pip_audit_report) if pip_audit_report else ({}, {})
    names = {package.name for package in packages}  # pip-audit also lists this project itself
    report.pip_audit_skipped = {name: reason for name, reason in skipped.items() if name in names}
    unreachable: str | None = None  # after one network failure, don't wait on every other package
    for package in packages:
        if package.name in audited:
            report.audited[package.name] = PIP_AUDIT
            report.vulnerabilities.extend(audited[package.name])
            continue
        if unreachable is not None:
            report.not_audited[package.name] = unreachable
            continue
        try:
            outcome = from_project_json(package, fetch(package.name))
        except ProjectNotFound:
            outcome = "not on PyPI"
        except Unreachable as exc:
            unreachable = f"PyPI unreachable ({exc}, asking for {package.name})"
            outcome = unreachable
        if isinstance(outcome, str):
            report.not_audited[package.name] = outcome
            continue
        report.audited[package.name] = PROJECT_JSON
        report.vulnerabilities.extend(outcome)
    return report


def apply_ignores(report: Report, ignore_ids: Iterable[str]) -> None:
    """Move findings whose id or alias was assessed (``--ignore-vuln``) to ``report.ignored``."""
    ignore = set(ignore_ids)
    kept = [v for v in report.vulnerabilities if not ignore & {v.id, *v.aliases}]
    report.ignored = [v for v in report.vulnerabilities if v not in kept]
    report.vulnerabilities = kept


def exit_code(report: Report, allow_incomplete: bool) -> int:
    if report.vulnerabilities:
        return 1
    if report.not_audited and not allow_incomplete:
        return 2
    return 0


# -- reporting ---------------------------------------------------------------------------------------
def render(report: Report) -> str:
    by_source = {
        source: sum(1 for s in report.audited.values() if s == source) for source in (PIP_AUDIT, PROJECT_JSON)
    }
    lines = [
        f"audited: {len(report.audited)} packages ({by_source[PIP_AUDIT]} by pip-audit, "
        f"{by_source[PROJECT_JSON]} by the PyPI project JSON at their latest release)",
    ]
    if report.pip_audit_error:
        lines.append(f"pip-audit: {report.pip_audit_error}")
    if report.pip_audit_skipped:
        example = next(iter(report.pip_audit_skipped.values()))
        lines.append(f"pip-audit skipped {len(report.pip_audit_skipped)} packages, e.g. {example!r}")
    lines.append(f"known vulnerabilities: {len(report.vulnerabilities)}")
    for vuln in report.vulnerabilities:
        fixed = ", ".join(vuln.fix_versions) or "no fixed release"
        aliases = f" ({', '.join(vuln.aliases)})" if vuln.aliases else ""
        lines.append(f"  {vuln.package} {vuln.version}: {vuln.id}{aliases}; fixed in {fixed} [{vuln.source}]")
    for vuln in report.ignored:
        lines.append(f"  ignored (--ignore-vuln): {vuln.package} {vuln.version}: {vuln.id}")
    lines.append(f"NOT audited: {len(report.not_audited)} packages")
    for name, reason in sorted(report.not_audited.items()):
        lines.append(f"  {name}: {reason}")
    if report.local:
        lines.append(f"local, not PyPI packages (this project): {', '.join(report.local)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="exit 0 when nothing vulnerable was found even if some packages could not be audited",
    )
    parser.add_argument("--ignore-vuln", action="append", default=[], metavar="ID")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per network request")
    args = parser.parse_args(argv)
    packages, local = installed_packages()
    pip_audit_report, pip_audit_error = run_pip_audit(args.timeout)
    report = audit(packages, pip_audit_report, lambda name: fetch_project_json(name, args.timeout))
    report.local = local
    report.pip_audit_error = pip_audit_error
    apply_ignores(report, args.ignore_vuln)
    print(render(report))
    code = exit_code(report, args.allow_incomplete)
    if report.vulnerabilities:
        print(f"FAILED: {len(report.vulnerabilities)} known vulnerabilities")
    elif report.not_audited:
        allowed = " (allowed: --allow-incomplete)" if code == 0 else ""
        print(f"INCOMPLETE: {len(report.not_audited)} packages not audited{allowed}")
    else:
        print("OK: every package audited, no known vulnerability")
    return code


if __name__ == "__main__":
    sys.exit(main())
