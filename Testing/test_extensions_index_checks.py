"""The rules of Slicer/ExtensionsIndex's checker (``scripts/check_description_files.py``), run on
this repository without a network: what a pull request adding
``Resources/ExtensionsIndex/KidneyTumorSeg.json`` to the index must pass.

The checker clones the repository named by ``scm_url`` and reads its top ``CMakeLists.txt`` as
text: ``project()`` must name the extension (the description file's name), the icon and
screenshot URLs are taken literally from ``set(EXTENSION_ICONURL "...")`` and
``set(EXTENSION_SCREENSHOTURLS "...")`` and must start with ``http`` (a CMake variable there is
refused) and be images; a licence file must lie at the repository root. Its schema check is
``test_slicer_metadata.py``'s; where the checker downloads an image, these rules look for the file
the URL names in this repository.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

from repo_files import REPO
from test_slicer_metadata import CATALOG_ENTRY, TOP_CMAKE, raw_url

LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8")
# The checker's ACCEPTED_EXTENSION_CATEGORIES that an extension like this one could use.
CATEGORIES = ("Analysis", "Informatics", "Quantification", "Segmentation", "Utilities")


def description_problems(name: str, entry: dict) -> list[str]:
    """The checker's category, SCM URL and repository-name rules for the entry ``name``.json."""
    problems = []
    if entry.get("category") not in CATEGORIES:
        problems.append(f"category {entry.get('category')!r} is unknown")
    url = entry.get("scm_url") or ""
    if "://" not in url or urllib.parse.urlsplit(url).scheme not in ("git", "https"):
        problems.append(f"scm_url {url!r} is not git:// or https://")
    repository = Path(urllib.parse.urlsplit(url).path).stem
    if "slicer" not in repository.lower():
        problems.append(f"repository name {repository!r} does not contain 'Slicer'")
    return problems


def cmake_problems(name: str, cmake_text: str, repository: Path, repository_url: str) -> list[str]:
    """The checker's CMakeLists.txt rules, with URLs into ``repository_url`` checked against the
    files of ``repository`` (the checker downloads them)."""
    problems = []
    projects = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake_text, re.IGNORECASE | re.MULTILINE)
    if not projects or projects[0].strip("\"'") != name:
        problems.append(f"project() names {projects[:1]}, not {name!r}")
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake_text, re.IGNORECASE | re.MULTILINE)
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake_text, re.IGNORECASE | re.MULTILINE)
    urls = [icons[0].strip()] if icons else []
    urls += screenshots[0].split() if screenshots else []
    if not icons:
        problems.append("no EXTENSION_ICONURL")
    if not screenshots or not screenshots[0].split():
        problems.append("no EXTENSION_SCREENSHOTURLS")
    raw = raw_url(repository_url) + "/"
    for url in urls:
        if not url.startswith("http"):
            problems.append(f"{url!r} does not start with 'http'")
        elif not url.startswith(raw) or not url.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"{url!r} is not an image of {repository_url}")
        elif not _is_image(repository / url[len(raw):]):
            problems.append(f"{url!r} names no image in the repository")
    return problems


def license_problems(repository: Path) -> list[str]:
    if any((repository / name).is_file() for name in LICENSE_NAMES):
        return []
    return ["no license file at the repository root"]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8].startswith(IMAGE_SIGNATURES)


def _entry() -> tuple[str, dict]:
    return CATALOG_ENTRY.stem, json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


def test_the_repository_passes_the_index_checkers_rules():
    name, entry = _entry()
    assert description_problems(name, entry) == []
    assert cmake_problems(name, TOP_CMAKE.read_text(encoding="utf-8"), REPO, entry["scm_url"]) == []
    assert license_problems(REPO) == []


def test_the_licence_is_the_packages_and_the_readme_names_it():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = { text = "Apache-2.0" }' in pyproject
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert "[LICENSE](LICENSE)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in TOP_CMAKE.read_text(encoding="utf-8")  # the description the Extensions Manager shows


def test_the_rules_refuse_what_the_checker_refuses(tmp_path):
    name, entry = _entry()
    cmake = TOP_CMAKE.read_text(encoding="utf-8")
    url = entry["scm_url"]
    assert cmake_problems(name, cmake, REPO, url) == []
    # the form this repository had: URLs built from a CMake variable
    variable = re.sub(r'(set\(EXTENSION_ICONURL ")[^/]+//[^/]+/[^/]+/[^/]+/main', r"\1${EXTENSION_RAW_URL}", cmake)
    assert variable != cmake and any("does not start with 'http'" in p for p in cmake_problems(name, variable, REPO, url))
    assert any("no image" in p for p in cmake_problems(name, cmake.replace("qa.png", "missing.png"), REPO, url))
    assert any("project()" in p for p in cmake_problems("Other", cmake, REPO, url))
    assert license_problems(tmp_path) == ["no license file at the repository root"]
    assert description_problems(name, {**entry, "scm_url": "ssh://github.com/KidneyTumorSeg/SlicerKidneyTumorSeg"})
    assert description_problems(name, {**entry, "scm_url": url.replace("SlicerKidneyTumorSeg", "Kidneys")})
    assert description_problems(name, {**entry, "category": "Kidneys"})
