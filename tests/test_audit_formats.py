"""``wasmsbx audit --json`` against its documented schema, and ``--sarif`` against SARIF 2.1.0."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from wasmsbx.audit.report import RULES
from wasmsbx.audit.schema import SCHEMA

from .conftest import EXAMPLES, GUESTS, ROOT

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
MODULES = [
    EXAMPLES / "add.wat",
    EXAMPLES / "wasi" / "hello.wasm",
    GUESTS / "fsprobe.wasm",
    GUESTS / "imports_env.wat",
    GUESTS / "start_trap.wat",
    GUESTS / "types.wat",
    GUESTS / "table_grow.wat",
]
IDS = [m.name for m in MODULES]


@pytest.fixture
def granting_policy(tmp_path):
    """A policy with a read-write grant, env and limits, so policy findings appear."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "sandbox.toml"
    path.write_text(
        "[limits]\n"
        'memory = "64MiB"\n'
        "\n"
        "[filesystem]\n"
        'read_write = ["data:/data"]\n'
        "\n"
        "[env]\n"
        'inherit = ["*"]\n'
    )
    return path


def json_validator():
    return jsonschema.Draft202012Validator(SCHEMA)


def sarif_validator():
    return jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text()))


# ---------------------------------------------------------------------------- --json


def test_json_schema_is_itself_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_json_output_matches_the_documented_schema(cli, module):
    result = cli("audit", module, "--json")
    assert result.code == 0, result
    data = result.json()
    json_validator().validate(data)
    assert data["schema"] == "wasmsbx.audit/1"


def test_json_with_policy_findings_matches_the_schema(cli, granting_policy):
    data = cli("audit", GUESTS / "fsprobe.wasm", "--json", "--policy", granting_policy).json()
    json_validator().validate(data)
    rules = {f["rule"] for f in data["findings"]}
    assert {"WSX103", "WSX110", "WSX112"} <= rules
    assert data["policy"]["source"] == str(granting_policy)
    assert data["risk"]["score"] == sum(i["points"] for i in data["risk"]["items"])


def test_json_schema_is_closed():
    """An undocumented field fails validation, so the schema test above can fail."""
    from wasmsbx import policy as policy_mod
    from wasmsbx.audit.report import audit_file

    data = json.loads(json.dumps(audit_file(EXAMPLES / "add.wat", policy_mod.defaults()).to_dict()))
    for where in (data, data["module"], data["risk"]):
        broken = copy.deepcopy(data)
        target = broken if where is data else broken[[k for k, v in data.items() if v is where][0]]
        target["surprise"] = 1
        assert list(json_validator().iter_errors(broken))


def _schema_fields(node, out=None) -> set:
    out = set() if out is None else out
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            out.add(name)
            _schema_fields(sub, out)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                _schema_fields(node[key], out)
        for sub in node.get("oneOf", []):
            _schema_fields(sub, out)
    return out


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_readme_documents_every_json_field():
    section = _readme_section("audit")
    documented = set(re.findall(r"`([a-z_0-9]+)`", section))
    missing = sorted(_schema_fields(SCHEMA) - documented)
    assert not missing, f"README ## audit does not document: {missing}"


def test_readme_lists_every_rule():
    section = _readme_section("audit")
    for rule_id, rule in RULES.items():
        assert f"`{rule_id}`" in section, rule_id
        assert rule.severity in section


# ---------------------------------------------------------------------------- --sarif


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_sarif_is_valid_2_1_0(cli, module):
    result = cli("audit", module, "--sarif")
    assert result.code == 0, result
    log = result.json()
    errors = [e.message for e in sarif_validator().iter_errors(log)]
    assert not errors
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-schema-2.1.0.json")


def test_sarif_validation_can_fail():
    """The official schema rejects a wrong level and a missing message: the test above is live."""
    log = {
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "wasmsbx"}},
                "results": [{"ruleId": "WSX001", "level": "critical"}],
            }
        ],
    }
    messages = " ".join(e.message for e in sarif_validator().iter_errors(log))
    assert "critical" in messages and "message" in messages


def test_sarif_results_match_the_findings(cli, granting_policy):
    module = GUESTS / "fsprobe.wasm"
    findings = cli("audit", module, "--json", "--policy", granting_policy).json()["findings"]
    log = cli("audit", module, "--sarif", "--policy", granting_policy).json()
    sarif_validator().validate(log)
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    assert len(run["results"]) == len(findings)
    levels = {"high": "error", "medium": "warning", "low": "note", "info": "note"}
    for result, finding in zip(run["results"], findings):
        assert result["ruleId"] == finding["rule"]
        assert rules[result["ruleIndex"]]["id"] == finding["rule"]
        assert result["level"] == levels[finding["severity"]]
        assert finding["message"] in result["message"]["text"]
        location = result["locations"][0]["physicalLocation"]
        artifact = run["artifacts"][location["artifactLocation"]["index"]]
        assert artifact["location"]["uri"] == location["artifactLocation"]["uri"]
        assert location["region"]["startLine"] >= 1
    for rule in rules:
        assert float(rule["properties"]["security-severity"]) > 0
    assert (
        run["properties"]["riskScore"]
        == cli("audit", module, "--json", "--policy", granting_policy).json()["risk"]["score"]
    )


def test_sarif_points_policy_findings_at_the_policy_line(cli, granting_policy):
    log = cli("audit", GUESTS / "fsprobe.wasm", "--sarif", "--policy", granting_policy).json()
    run = log["runs"][0]
    by_rule = {r["ruleId"]: r["locations"][0]["physicalLocation"] for r in run["results"]}
    policy_uri = run["artifacts"][1]["location"]["uri"]
    assert by_rule["WSX110"]["artifactLocation"]["uri"] == policy_uri
    assert by_rule["WSX110"]["region"]["startLine"] == 5  # read_write = [...]
    assert by_rule["WSX103"]["region"]["startLine"] == 8  # inherit = ["*"]
    assert by_rule["WSX201"]["artifactLocation"]["index"] == 0  # the module


def test_sarif_uses_relative_uris_under_the_cwd(cli, isolated):
    shutil.copy(GUESTS / "imports_env.wat", isolated / "my module.wat")
    log = cli("audit", "my module.wat", "--sarif").json()
    assert log["runs"][0]["artifacts"][0]["location"]["uri"] == "my%20module.wat"
    outside = cli("audit", GUESTS / "imports_env.wat", "--sarif").json()
    assert outside["runs"][0]["artifacts"][0]["location"]["uri"].startswith("file:///")


def test_sarif_fingerprints_are_stable_and_distinct(cli):
    def prints():
        log = cli("audit", EXAMPLES / "wasi" / "hello.wasm", "--sarif").json()
        return [r["partialFingerprints"]["wasmsbxFinding/v1"] for r in log["runs"][0]["results"]]

    first = prints()
    assert first == prints() and len(set(first)) == len(first) > 1


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess
