"""The Lambda layers as `make layer`, `sam build` and the bench build them (layers/forwarder/build_layer.py):
SAM runs the Makefile's targets, the zip is the same bytes every time, only unused files are left out, and the
config ships as JSON that reads back as the same config."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from cfnlint.decode import cfn_yaml

from forwarder.config import load_config
from forwarder.runtime import RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]


def load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_layer", ROOT / "layers" / "forwarder" / "build_layer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_layer = load_build_script()
TEMPLATE = cfn_yaml.load(str(ROOT / "template.yaml"))


@pytest.mark.parametrize("layer", ["ForwarderLayer", "ConfigLayer"])
def test_sam_builds_each_layer_with_a_make_target(layer: str) -> None:
    metadata = TEMPLATE["Resources"][layer]["Metadata"]
    assert metadata["BuildMethod"] == "makefile"
    makefile = (ROOT / metadata["ContextPath"] / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^build-{layer}:", makefile, re.MULTILINE)


def test_functions_need_no_requirements_file() -> None:
    template = TEMPLATE
    # an empty requirements.txt per function makes every `sam build` miss its cache; SAM builds without one
    code_dirs = [
        resource["Properties"]["CodeUri"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
    ]
    assert code_dirs
    assert [path for path in code_dirs if (ROOT / path / "requirements.txt").exists()] == []


def test_the_layer_zip_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    source = tmp_path / "layer"
    (source / "python" / "pkg").mkdir(parents=True)
    (source / "python" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (source / "python" / "pkg" / "native.so").write_bytes(b"\x7fELF")
    (source / "python" / "pkg" / "native.so").chmod(0o755)
    build_layer.write_zip(source, tmp_path / "first.zip")
    (source / "python" / "pkg" / "__init__.py").touch()  # a later mtime changes nothing
    build_layer.write_zip(source, tmp_path / "second.zip")
    assert (tmp_path / "first.zip").read_bytes() == (tmp_path / "second.zip").read_bytes()


@pytest.mark.parametrize(
    ("path", "pruned"),
    [
        ("aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js", True),
        ("aws_lambda_powertools/event_handler/openapi/swagger_ui/html.py", False),
        ("yaml/_yaml.cpython-313-aarch64-linux-gnu.so", True),
        ("yaml/__init__.py", False),
        ("pydantic_core/_pydantic_core.cpython-313-aarch64-linux-gnu.so", False),
    ],
)
def test_only_unused_files_are_left_out_of_the_layer(tmp_path: Path, path: str, pruned: bool) -> None:
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text("")
    assert build_layer.prune(tmp_path) == ([path] if pruned else [])
    assert target.exists() is not pruned


def test_the_config_ships_as_json_that_reads_back_as_the_same_config(tmp_path: Path) -> None:
    built = build_layer.build_config_layer(tmp_path, ROOT / "config" / "forwarder.yaml")
    assert built == tmp_path / "forwarder.json"
    json.loads(built.read_text(encoding="utf-8"))  # JSON, not YAML
    assert load_config(built).model_dump() == load_config(ROOT / "config" / "forwarder.yaml").model_dump()
    # where the functions look for it: the template's default, the settings' default, the layer's file
    default = TEMPLATE["Parameters"]["ConfigPath"]["Default"]
    assert default == RuntimeSettings().config_path == f"/opt/{built.name}"


def test_an_invalid_config_stops_the_config_layer_build(tmp_path: Path) -> None:
    source = tmp_path / "forwarder.yaml"
    source.write_text("version: 1\nclients: []\ngroup_keys:\n  demo:\n    integrations: 7\n")
    with pytest.raises(SystemExit, match="invalid"):
        build_layer.build_config_layer(tmp_path / "out", source)
    assert not (tmp_path / "out" / "forwarder.json").exists()


def test_bytecode_is_the_same_whatever_directory_the_layer_is_built_in(tmp_path: Path) -> None:
    compiled = []
    for name in ("make-layer", "sam-artifacts"):
        package = tmp_path / name / "python" / "pkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("def fail():\n    raise ValueError('where am I')\n")
        build_layer.compile_bytecode(package.parent)
        [pyc] = (package / "__pycache__").glob("__init__.*.pyc")
        compiled.append(pyc.read_bytes())
    assert compiled[0] == compiled[1]
    assert b"/opt/python/pkg/__init__.py" in compiled[0]  # tracebacks name the path Lambda sees
