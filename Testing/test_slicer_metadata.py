"""The extension's metadata points at real things: one repository URL, icon and screenshot files that
exist, a catalog entry valid against Slicer's schema, and CMake lists naming every module file."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from repo_files import REPO, repository_files

MODULE_DIR = REPO / "KidneyTumorSeg"
TOP_CMAKE = REPO / "CMakeLists.txt"
CATALOG_ENTRY = REPO / "Resources" / "ExtensionsIndex" / "KidneyTumorSeg.json"
CATALOG_SCHEMA = REPO / "Testing" / "Data" / "slicer" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
TEXT_SUFFIXES = {".py", ".md", ".json", ".txt", ".ui", ".toml", ".cfg", ".cmake"}


def cmake_variables(path: Path = TOP_CMAKE) -> dict[str, str]:
    """``set(NAME "value")`` of the top CMakeLists, ``${...}`` expanded."""
    text = path.read_text(encoding="utf-8")
    variables: dict[str, str] = {}

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], value)

    for line in text.splitlines():
        if match := re.match(r'set\((\w+)\s+"([^"]*)"\)', line.strip()):
            variables[match.group(1)] = expand(match.group(2))
    return variables


def repository_text_files() -> list[Path]:
    return [path for path in repository_files() if path.suffix in TEXT_SUFFIXES or path.name == "CMakeLists.txt"]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def raw_url(repository_url: str) -> str:
    """Where GitHub serves the files of ``repository_url``'s main branch."""
    return repository_url.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main"


def test_every_url_names_the_one_public_repository():
    variables = cmake_variables()
    url = variables["EXTENSION_REPOSITORY_URL"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url)
    assert variables["EXTENSION_HOMEPAGE"].startswith(url + "#")
    owner_repo = url.split("github.com/")[1]
    for path in repository_text_files():
        for found in re.findall(r"https://(?:github\.com|raw\.githubusercontent\.com)/KidneyTumorSeg/[\w.-]+", path.read_text(errors="ignore")):
            assert found.endswith(owner_repo), f"{path.relative_to(REPO)} names {found}, not {url}"


def test_icon_and_screenshot_urls_name_files_that_exist():
    variables = cmake_variables()
    raw = raw_url(variables["EXTENSION_REPOSITORY_URL"])
    icon = variables["EXTENSION_ICONURL"]
    screenshots = variables["EXTENSION_SCREENSHOTURLS"].split()
    assert screenshots
    for url in [icon, *screenshots]:
        assert url.startswith(raw + "/"), url
        path = REPO / url[len(raw) + 1:]
        assert path.is_file(), f"{url} names a missing file"
    assert _png_size(REPO / icon[len(raw) + 1:]) == (128, 128)
    width, height = _png_size(REPO / screenshots[0][len(raw) + 1:])
    assert width >= 600 and height >= 300  # a picture of a result, not an icon


def test_the_catalog_entry_validates_against_slicers_schema_and_matches_the_cmake_metadata():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors(entry)) == []
    assert entry["$schema"] == schema["$id"]
    variables = cmake_variables()
    assert entry["scm_url"] == variables["EXTENSION_REPOSITORY_URL"]
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"].split()
    # The schema is strict: the CMake-only fields are refused, so the check above is a real one.
    assert not validator.is_valid({**entry, "homepage": variables["EXTENSION_HOMEPAGE"]})
    assert not validator.is_valid({k: v for k, v in entry.items() if k != "scm_url"})


def _cmake_list(text: str, name: str) -> list[str]:
    body = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert body, name
    return body.group(1).split()


def test_the_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "GLOB" not in text
    scripts = set(_cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    resources = set(_cmake_list(text, "MODULE_PYTHON_RESOURCES"))

    def files(pattern: str) -> set[str]:
        return {str(p.relative_to(MODULE_DIR)).replace("\\", "/") for p in MODULE_DIR.glob(pattern)
                if p.is_file() and "__pycache__" not in p.parts}

    present_scripts = files("KidneyTumorSegLib/**/*.py") | {"${MODULE_NAME}.py"}
    present_resources = files("Resources/**/*")
    assert not present_scripts - scripts, f"add to MODULE_PYTHON_SCRIPTS in KidneyTumorSeg/CMakeLists.txt: {sorted(present_scripts - scripts)}"
    assert not scripts - present_scripts, f"listed but missing: {sorted(scripts - present_scripts)}"
    assert not present_resources - resources, f"add to MODULE_PYTHON_RESOURCES in KidneyTumorSeg/CMakeLists.txt: {sorted(present_resources - resources)}"
    assert not resources - present_resources, f"listed but missing: {sorted(resources - present_resources)}"
