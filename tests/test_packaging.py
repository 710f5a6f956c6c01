"""Packaging: the folders index/ and services/ install under the prvr namespace, and no module imports them as
top-level packages (which would put packages named ``index`` / ``services`` into a user's site-packages)."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"prvr": "prvr", "prvr.index": "index", "prvr.services": "services"}


def _options() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser["options"]


def _listed(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def test_package_dir_maps_the_three_folders_under_prvr():
    mapping = dict(line.replace(" ", "").split("=") for line in _listed(_options()["package_dir"]))
    assert mapping == FOLDERS


def test_every_package_folder_is_listed_and_nothing_else():
    expected = set()
    for package, folder in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            expected.add(".".join([package, *relative.parts]))
    listed = set(_listed(_options()["packages"]))
    assert listed == expected
    assert {name.split(".")[0] for name in listed} == {"prvr"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_imports_index_or_services_as_top_level_packages():
    offenders = [str(path.relative_to(REPO)) for folder in ("prvr", "index", "services", "scripts", "tests")
                 for path in sorted((REPO / folder).rglob("*.py")) if _imported_roots(path) & {"index", "services"}]
    assert offenders == []


def test_the_mapped_packages_import_from_their_folders():
    import prvr.index.catalog
    import prvr.services.app

    assert Path(prvr.index.catalog.__file__).resolve().parent == REPO / "index"
    assert Path(prvr.services.app.__file__).resolve().parent == REPO / "services"
