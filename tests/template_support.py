"""template.yaml as the template tests read it: loaded with its short intrinsic tags, transformed by SAM as
`sam deploy` would (no AWS account: managed policies are not looked up), and small readers of the result."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"


class _NoManagedPolicies:
    """Stands in for samtranslator's ManagedPolicyLoader, which would call IAM (no AWS account here)."""

    def load(self) -> dict[str, str]:
        return {}


def load_sam_template() -> dict[str, Any]:
    # cfn-lint's loader understands the short intrinsic tags (!Ref, !GetAtt, !Sub, ...);
    # a JSON round trip leaves plain dicts, lists and strings.
    loaded = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    assert isinstance(loaded, dict)
    return loaded


def sam_transform(sam_template: dict[str, Any], parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """The CloudFormation SAM generates, given these parameter values (SAM resolves a few intrinsics with them)."""
    template = copy.deepcopy(sam_template)
    # `sam build`/`sam package` replace local code paths by S3 locations before the transform runs.
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://artifacts/forwarder.zip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # samtranslator derives the partition from it
        transformed = transform(template, parameters or {}, _NoManagedPolicies())  # type: ignore[arg-type]
    assert isinstance(transformed, dict)
    return transformed


def resources(cfn: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """The properties of each resource of a type, by logical id."""
    return {
        name: resource.get("Properties", {})
        for name, resource in cfn["Resources"].items()
        if resource["Type"] == resource_type
    }


def target(value: Any) -> str | None:
    """The logical id a {"Ref": X} or {"Fn::GetAtt": [X, attr]} points at."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            get_att = value["Fn::GetAtt"]
            return str(get_att[0] if isinstance(get_att, list) else get_att.split(".")[0])
    return None


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement.get("Action", [])
    return [str(action)] if isinstance(action, str) else [str(item) for item in action]


def parameter_default(cfn: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter a {"Ref": parameter} names (limits are parameters)."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in cfn.get("Parameters", {}):
        return cfn["Parameters"][value["Ref"]]["Default"]
    return value
