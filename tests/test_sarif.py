"""SARIF 2.1.0 from ``flake8 --format=sarif`` and ``flake8-amp check --format=sarif``: valid against the
official schema (tests/data/sarif-schema-2.1.0.json, offline), every rule described, one result per finding
at the place flake8 prints, and the same log from both."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft7Validator
from jsonschema.validators import validator_for
from sarif_pydantic import Sarif

from expectations import FIXTURE_FILES, copied, fixture_arguments
from flake8_amp import __version__
from flake8_amp.rule_docs import REPOSITORY_URL, doc_url
from flake8_amp.rules import ALL_RULES, RULES_BY_CODE
from flake8_amp.sarif import LEVELS
from linter_runs import FLAKE8_LINE, run_flake8

SCHEMA_FILE = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
DEPRECATED = "import torch\nscaler = torch.cuda.amp.GradScaler()\n"
FIXTURE_FOLDER = copied(FIXTURE_FILES[0]).parent
#: the fixtures that need no options of their own (nearly all), linted in one run
PLAIN_FIXTURES = [
    copied(path).name for path in FIXTURE_FILES if not fixture_arguments(path.read_text(encoding="utf-8"))
]


def validate(log: dict) -> None:
    """The log must satisfy the official schema, with the validator of the draft it declares (draft-04) and
    with Draft 7's, and must load into sarif-pydantic's model."""
    for validator in (validator_for(SCHEMA), Draft7Validator):
        errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator(SCHEMA).iter_errors(log)]
        assert errors == []
    Sarif.model_validate(log)


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flake8_amp.cli", "check", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture
def project_with(tmp_path):
    """Makes a new folder holding ``train.py`` with the source given."""
    folders = iter(range(1000))

    def make(source: str) -> Path:
        folder = tmp_path / f"project{next(folders)}"
        folder.mkdir()
        (folder / "train.py").write_text(source, encoding="utf-8")
        return folder

    return make


@pytest.fixture(scope="module")
def fixture_runs() -> dict[str, str]:
    """The fixtures' findings as text, as check's SARIF and as flake8's SARIF (each run once)."""
    args = ["--amp-preview=on", *PLAIN_FIXTURES]
    runs = {
        "text": run_check(*args, cwd=FIXTURE_FOLDER),
        "check": run_check("--format=sarif", *args, cwd=FIXTURE_FOLDER),
        "flake8": run_flake8([], "--format=sarif", *args, cwd=FIXTURE_FOLDER),
    }
    for run in runs.values():
        assert run.returncode == 1 and run.stderr == ""
    return {name: run.stdout for name, run in runs.items()}


def test_the_schema_is_the_official_one_unchanged():
    assert SCHEMA["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"  # as tests/data/README.md
    validator_for(SCHEMA).check_schema(SCHEMA)


def test_the_schema_rejects_what_it_must(project_with):
    """The validation is not vacuous: a log with a wrong level, a line 0 or a message without text fails it."""
    log = json.loads(run_check("--format=sarif", "train.py", cwd=project_with(DEPRECATED)).stdout)
    validate(log)

    def level(result):
        result["level"] = "fatal"

    def line(result):
        result["locations"][0]["physicalLocation"]["region"]["startLine"] = 0

    def message(result):
        result["message"] = {}

    for breaking in (level, line, message):
        broken = json.loads(json.dumps(log))
        breaking(broken["runs"][0]["results"][0])
        assert list(validator_for(SCHEMA)(SCHEMA).iter_errors(broken)), breaking.__name__


def test_check_sarif_validates_with_one_result_per_finding_where_flake8_prints_it(fixture_runs):
    log = json.loads(fixture_runs["check"])
    validate(log)
    [run] = log["runs"]
    lines = fixture_runs["text"].splitlines()
    assert len(run["results"]) == len(lines) > 100
    for result, line in zip(run["results"], lines):
        match = FLAKE8_LINE.match(line)
        location = result["locations"][0]["physicalLocation"]
        source = (FIXTURE_FOLDER / match["path"]).read_text(encoding="utf-8").splitlines()[int(match["line"]) - 1]
        byte_column = int(match["col"]) - 1
        assert location["artifactLocation"] == {"uri": match["path"], "uriBaseId": "%SRCROOT%"}
        assert location["region"] == {
            "startLine": int(match["line"]),
            "startColumn": len(source.encode()[:byte_column].decode()) + 1,
        }
        assert result["ruleId"] == match["code"]
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == match["code"]
        assert result["level"] == LEVELS[RULES_BY_CODE[match["code"]].severity]
        assert result["message"]["text"] == line[match.end() :]
    assert {result["level"] for result in run["results"]} == {"error", "warning", "note"}
    fingerprints = [result["partialFingerprints"]["flake8-amp/v1"] for result in run["results"]]
    assert len(set(fingerprints)) == len(fingerprints)


def test_flake8_format_sarif_gives_the_same_log_as_check(fixture_runs):
    validate(json.loads(fixture_runs["flake8"]))
    assert fixture_runs["flake8"] == fixture_runs["check"]


def test_every_rule_is_described(fixture_runs):
    driver = json.loads(fixture_runs["check"])["runs"][0]["tool"]["driver"]
    assert (driver["name"], driver["version"], driver["informationUri"]) == ("flake8-amp", __version__, REPOSITORY_URL)
    assert [rule["id"] for rule in driver["rules"]] == [rule.code for rule in ALL_RULES]
    for descriptor, rule in zip(driver["rules"], ALL_RULES):
        assert descriptor["name"] == rule.name
        assert descriptor["shortDescription"]["text"] == rule.summary
        assert descriptor["helpUri"] == doc_url(rule.code) == f"{REPOSITORY_URL}/blob/main/rule_docs/{rule.code}.md"
        assert descriptor["defaultConfiguration"]["level"] == {"HIGH": "error", "MEDIUM": "warning", "LOW": "note"}[
            rule.severity.value
        ]
        assert descriptor["properties"]["tags"][-1] == ("preview" if rule.preview else "stable")
        markdown = descriptor["help"]["markdown"]
        assert markdown.startswith(f"# {rule.code}: {rule.name}")
        assert not re.search(r"\]\((?!https?:)[^)]*\.md", markdown), "relative links must point at the published docs"


def test_columns_count_characters_where_flake8_counts_bytes(project_with):
    project = project_with('import torch\nname = "déjà vu"; scaler = torch.cuda.amp.GradScaler()\n')
    text = run_check("train.py", cwd=project).stdout
    assert text.startswith("train.py:2:30: AMP013 ")  # flake8's column: 29 UTF-8 bytes precede the call
    log = json.loads(run_check("--format=sarif", "train.py", cwd=project).stdout)
    assert log["runs"][0]["columnKind"] == "unicodeCodePoints"
    assert log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 2,
        "startColumn": 28,  # 27 characters precede it
    }


def test_other_codes_get_descriptors_and_an_unreadable_file_no_region(project_with):
    project = project_with(DEPRECATED)
    (project / "broken.py").write_text("import torch\ndef f(:\n")
    log = json.loads(
        run_check("--format=sarif", "--extend-select=E9", "broken.py", "missing.py", "train.py", cwd=project).stdout
    )
    validate(log)
    [run] = log["runs"]
    assert [rule["id"] for rule in run["tool"]["driver"]["rules"][len(ALL_RULES) :]] == ["E999", "E902"]
    broken, missing, train = run["results"]
    assert (broken["ruleId"], broken["level"], broken["ruleIndex"]) == ("E999", "error", len(ALL_RULES))
    assert "region" not in missing["locations"][0]["physicalLocation"]
    assert train["ruleIndex"] == [rule.code for rule in ALL_RULES].index("AMP013")


def test_fingerprints_follow_the_line_not_its_number(project_with):
    before = json.loads(run_check("--format=sarif", "train.py", cwd=project_with(DEPRECATED * 2)).stdout)
    after = json.loads(run_check("--format=sarif", "train.py", cwd=project_with("\n\n" + DEPRECATED * 2)).stdout)

    def fingerprints(log):
        return [result["partialFingerprints"]["flake8-amp/v1"] for result in log["runs"][0]["results"]]

    assert fingerprints(before) == fingerprints(after)
    assert len(set(fingerprints(before))) == 2  # the same line twice: two findings, told apart


def test_an_empty_run_is_a_valid_log_and_an_output_file_holds_one_log(project_with):
    project = project_with("import torch\n")
    output = project / "results.sarif"
    for _ in range(2):  # a second run replaces the log instead of appending a second one
        flake8 = run_flake8([], "--format=sarif", f"--output-file={output}", "train.py", cwd=project)
        assert flake8.returncode == 0 and flake8.stdout == ""
    log = json.loads(output.read_text())
    validate(log)
    assert log["runs"][0]["results"] == []


def test_a_file_outside_the_start_directory_has_an_absolute_uri(project_with):
    project = project_with(DEPRECATED)
    (project / "sub").mkdir()
    log = json.loads(run_check("--format=sarif", "../train.py", cwd=project / "sub").stdout)
    validate(log)
    assert log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": (project / "train.py").resolve().as_uri()
    }


def test_flake8_lists_the_sarif_format():
    assert "sarif" in run_flake8([], "--help").stdout


def test_the_doc_links_point_where_the_package_says_it_is_published():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Repository"] == REPOSITORY_URL
    assert f"- repo: {REPOSITORY_URL}\n" in (Path(__file__).parents[1] / "README.md").read_text()
