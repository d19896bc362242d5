"""One lock file for what the tests run and what the layer ships.

requirements.lock pins everything `make install` installs; layers/forwarder/requirements.txt pins what the Lambda
layer holds (built by `make layer` and `sam build`). `make lock` writes both; these tests fail when they drift
apart, when the lock no longer satisfies pyproject.toml, or when the layer would carry the runtime's botocore.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
LAYER = ROOT / "layers" / "forwarder"
#: Lambda's python3.13 on arm64, where the layer's requirements are evaluated.
LAMBDA_MARKERS = {
    "python_version": "3.13",
    "python_full_version": "3.13.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "aarch64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_layer", LAYER / "build_layer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_layer = load_build_script()


def requirements_of(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def test_the_layer_pins_exactly_the_versions_the_tests_run() -> None:
    locked = build_layer.pins(LOCK)
    layer = build_layer.pins(LAYER / "requirements.txt")
    assert layer, "the layer's requirements.txt pins nothing"
    differing = {
        name: (version, locked.get(name)) for name, version in layer.items() if locked.get(name) != version
    }
    assert differing == {}, "layer pin -> lock pin differ; run `make lock`"


def test_every_requirement_of_the_layer_is_pinned_within_its_range() -> None:
    layer = build_layer.pins(LAYER / "requirements.txt")
    for requirement in requirements_of(LAYER / "requirements.in"):
        name = build_layer.canonical(requirement.name)
        assert name in layer, f"{requirement} is not pinned in the layer's requirements.txt; run `make lock`"
        assert requirement.specifier.contains(layer[name], prereleases=True), (
            f"the layer pins {name}=={layer[name]}, outside {requirement}"
        )


def test_the_layer_holds_what_its_requirements_need_and_no_botocore() -> None:
    # the installed distributions are the lock's (checked below), so their metadata names what each one needs
    layer = build_layer.pins(LAYER / "requirements.txt")
    assert not build_layer.RUNTIME_PROVIDED & set(layer), "boto3/botocore come from the Lambda runtime"
    missing = set()
    for name, version in layer.items():
        assert importlib.metadata.version(name) == version, f"{name}: installed version is not the locked one"
        for line in importlib.metadata.requires(name) or []:
            needed = Requirement(line)
            if needed.marker is None or needed.marker.evaluate(LAMBDA_MARKERS):
                dependency = build_layer.canonical(needed.name)
                if dependency not in layer and dependency not in build_layer.RUNTIME_PROVIDED:
                    missing.add(f"{dependency} (needed by {name})")
    assert missing == set()


def test_every_layer_pin_carries_hashes() -> None:
    text = (LAYER / "requirements.txt").read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    for entry in entries:
        if "==" in entry.split("\n", 1)[0]:
            assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [
        Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]
    locked = build_layer.pins(LOCK)
    for requirement in declared:
        name = build_layer.canonical(requirement.name)
        assert name in locked, (
            f"{requirement.name} is declared in pyproject.toml but not locked; run `make lock`"
        )
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, outside {requirement}; run `make lock`"
        )
