"""The engine and the shared analysis: names, regions, module facts, the flake8 adapter."""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

from flake8_amp import engine
from flake8_amp.analysis.module_analysis import ModuleAnalysis
from flake8_amp.analysis.training_calls import TrainingCalls
from flake8_amp.engine import LintOptions, lint_source, lint_tree
from flake8_amp.rules import RULES_BY_CODE
from flake8_amp.plugin import AmpChecker
from flake8_amp.rules.base import Finding, Rule, Severity


FIXTURES = Path(__file__).parent / "fixtures"


def analyse(source: str) -> ModuleAnalysis:
    return ModuleAnalysis(ast.parse(textwrap.dedent(source)))


# ---------------------------------------------------------------- the walk
_EVERY_FORM = """
import torch, torch.nn.functional as F
from torch.cuda.amp import autocast as ac, GradScaler
global_value: int = 1


@torch.no_grad()
async def step(model, *args, scale=2.0, **kwargs) -> None:
    global global_value
    async with ac(enabled=False) as ctx, open("f") as g:
        x = {"a": 1, **kwargs}
        y = [v for v in args if v] + list({k: v for k, v in x.items()}) + [*{1, 2}]
        z = (lambda q, /, r=1: q + r)(-1, r=2) if not x else (yield from g)
        async for a in g:
            await a
    try:
        del x[0], y
        raise ValueError("v") from None
    except (TypeError, ValueError) as error:
        assert error, f"{error!r:>10} {scale:.{2}f}"
    finally:
        pass
    while z := 1 < 2 <= 3:
        break
    else:
        x @= y[1:2, ::3]


class Net(torch.nn.Module, metaclass=type):
    def forward(self, x):
        nonlocal_value = 0

        def inner():
            nonlocal nonlocal_value
            return (x.half() @ x.T).float().sum()
        return inner
"""
_PATTERN_MATCHING = """
match command:
    case [1, 2, *rest] | {"key": 1, **others} if rest:
        pass
    case Point(x=0, y=None) as point:
        pass
    case True | "s" | -1j | _:
        pass
"""
_TYPE_PARAMETERS = """
type Pair[T: int, *Ts, **P] = tuple[T, T]
def first[T](items: list[T]) -> T:
    return items[0]
"""
# Shared singletons the walk skips on purpose: they carry no position and no facts.
_SINGLETONS = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


@pytest.mark.parametrize(
    "source, min_version",
    [(_EVERY_FORM, (3, 9)), (_PATTERN_MATCHING, (3, 10)), (_TYPE_PARAMETERS, (3, 12))],
    ids=["every-form", "pattern-matching", "type-parameters"],
)
def test_the_walk_records_every_node_and_its_parent_in_source_order(source, min_version):
    if sys.version_info < min_version:
        pytest.skip(f"syntax of Python {min_version}")
    tree = ast.parse(source)
    analysis = ModuleAnalysis(tree)
    expected_parents = {
        child: parent
        for parent in ast.walk(tree)
        for child in ast.iter_child_nodes(parent)
        if not isinstance(child, _SINGLETONS)
    }
    assert analysis.parents == expected_parents
    for node_type in {type(node) for node in expected_parents}:
        # pre-order: an outer node before the nodes inside it, siblings left to right
        expected = [node for node in _pre_order(tree) if type(node) is node_type]
        assert analysis.nodes(node_type) == expected, node_type.__name__


def _pre_order(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _pre_order(child)


# ---------------------------------------------------------------- qualified names
@pytest.mark.parametrize(
    "imports, expr, expected",
    [
        ("import torch.nn.functional as F", "F.softmax", "torch.nn.functional.softmax"),
        ("from torch import nn", "nn.BCELoss", "torch.nn.BCELoss"),
        ("from torch.nn import BCELoss as B", "B", "torch.nn.BCELoss"),
        ("from torch.cuda.amp import autocast", "autocast", "torch.cuda.amp.autocast"),
        ("import torch.nn.functional", "torch.nn.functional.softmax", "torch.nn.functional.softmax"),
        ("from torch.nn.modules.loss import BCELoss", "BCELoss", "torch.nn.BCELoss"),
        ("import torch", "softmax", None),
        ("from . import nn", "nn.BCELoss", ".nn.BCELoss"),  # relative: one dot per level, for the project index
        ("from ..models import Net", "Net", "..models.Net"),
    ],
)
def test_qualified_names_through_imports_and_aliases(imports, expr, expected):
    analysis = analyse(imports)
    assert analysis.resolve(ast.parse(expr, mode="eval").body) == expected


# ---------------------------------------------------------------- autocast regions
def region_settings(source: str):
    analysis = analyse(source)
    return [(r.api, r.device_type, r.dtype, r.enabled) for r in analysis.regions]


@pytest.mark.parametrize(
    "source, expected",
    [
        ('with torch.autocast("cuda"): pass', ("torch.autocast", "cuda", None, True)),
        (
            'with torch.amp.autocast(device_type="cpu", dtype=torch.bfloat16): pass',
            ("torch.amp.autocast", "cpu", "bfloat16", True),
        ),
        ("with torch.cuda.amp.autocast(enabled=False): pass", ("torch.cuda.amp.autocast", "cuda", None, False)),
        ("with torch.cpu.amp.autocast(): pass", ("torch.cpu.amp.autocast", "cpu", None, True)),
        ("with torch.autocast('cuda', torch.float16, use_amp): pass", ("torch.autocast", "cuda", "float16", None)),
        ("with torch.autocast(device, dtype=dt): pass", ("torch.autocast", None, None, True)),
    ],
)
def test_region_settings_are_captured_where_literal(source, expected):
    assert region_settings("import torch\n" + source) == [expected]


def test_bare_imported_name_and_decorator_regions():
    analysis = analyse(
        """
        import torch
        from torch.cuda.amp import autocast
        @autocast(dtype=torch.bfloat16)
        def forward(x):
            return x
        with autocast():
            pass
        """
    )
    assert {(r.device_type, r.dtype) for r in analysis.regions} == {("cuda", "bfloat16"), ("cuda", None)}


def test_context_nests_regions_and_sees_enabled_false_inside():
    analysis = analyse(
        """
        import torch
        def f(x):
            with torch.autocast("cuda"):
                a = x
                with torch.autocast("cuda", enabled=False):
                    b = x
            c = x
        """
    )
    assigns = {node.targets[0].id: node for node in analysis.nodes(ast.Assign)}
    assert analysis.context(assigns["a"]).in_enabled_autocast
    inner = analysis.context(assigns["b"])
    assert len(inner.regions) == 2 and inner.in_disabled_autocast and not inner.in_enabled_autocast
    assert analysis.context(assigns["c"]).regions == ()


def test_a_name_bound_to_autocast_opens_a_region_of_unknown_state():
    # nanoGPT: ctx = nullcontext() if device_type == 'cpu' else torch.amp.autocast(...)
    analysis = analyse(
        """
        import torch
        from contextlib import nullcontext
        ctx = nullcontext() if device_type == "cpu" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
        def estimate(model, x):
            with ctx:
                logits = model(x)
        """
    )
    assign = next(n for n in analysis.nodes(ast.Assign) if n.targets[0].id == "logits")
    region = analysis.context(assign).innermost_region
    assert region is not None and region.enabled is None and region.may_be_enabled


def test_nested_function_does_not_inherit_the_region_it_is_defined_in():
    analysis = analyse(
        """
        import torch
        with torch.autocast("cuda"):
            def later(x):
                y = x
        """
    )
    assign = analysis.nodes(ast.Assign)[0]
    assert analysis.context(assign).regions == ()


@pytest.mark.parametrize(
    "source, trains",
    [
        ("import torch\nloss.backward()", True),
        ("import torch\nopt = torch.optim.AdamW(params)", True),
        ("import torch\nscaler = torch.amp.GradScaler('cuda')", True),
        ("import torch\nwith torch.autocast('cuda'): pass", True),
        ("import torch\nmodel = torch.load('m.pt').half()\nprint(model(x))", False),
        ("import torch\nimport ext_cuda\next_cuda.backward(grad)", False),
        ("import torch\nsched = torch.optim.lr_scheduler.StepLR(opt, 1)", False),
    ],
)
def test_whether_the_module_trains(source, trains):
    assert analyse(source).derived(TrainingCalls).trains is trains


def test_calls_by_callee_name_and_by_qualified_name_come_in_source_order():
    analysis = analyse(
        """
        import torch
        from torch import save as persist
        from torch.cuda.amp import GradScaler as Scaler
        scaler = Scaler()
        def step(model, opt, x):
            opt.zero_grad()
            scaler.scale(model(x).sum()).backward()
            scaler.step(opt)
            step(model, opt, x)
            persist(model.state_dict(), "m.pt")
            torch.save(opt.state_dict(), "o.pt")
            save(opt, "x.pt")
        """
    )
    calls = analysis.calls_named("step", "backward")
    assert [ast.unparse(call.func) for call in calls] == ["scaler.scale(model(x).sum()).backward", "scaler.step", "step"]
    assert analysis.calls_named("missing") == []
    saves = analysis.calls_to({"torch.save"})
    assert [ast.unparse(call.func) for call in saves] == ["persist", "torch.save"]  # not the local save()
    either = analysis.calls_to({"torch.save"}, or_named=("backward", "save"))
    assert [ast.unparse(call.func) for call in either] == [
        "scaler.scale(model(x).sum()).backward", "persist", "torch.save", "save"
    ]  # torch.save once, though it is both
    training = analysis.derived(TrainingCalls)
    assert [ast.unparse(call) for call in training.grad_scaler_constructions] == ["Scaler()"]
    assert training.uses_grad_scaler


def test_the_analysis_of_a_module_is_freed_as_soon_as_it_is_linted(monkeypatch):
    """No reference cycle outlives lint_tree: in a long flake8 run, a cycle would keep every linted
    module's tree alive until a full collection, which then traverses everything flake8 has gathered."""
    analyses = []

    class Recorded(ModuleAnalysis):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            analyses.append(weakref.ref(self))

    monkeypatch.setattr(engine, "ModuleAnalysis", Recorded)
    source = open(FIXTURES / "amp019_scaler_bypassed.py", encoding="utf-8").read()
    gc.disable()
    try:
        assert lint_source(source, LintOptions(preview=True))  # the rules built analyses that point back at it
        assert len(analyses) == 1 and analyses[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_while_a_module_is_linted_and_left_as_found(monkeypatch, enabled):
    states = []

    class Observed(ModuleAnalysis):
        def __init__(self, *args, **kwargs):
            states.append(gc.isenabled())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine, "ModuleAnalysis", Observed)
    (gc.enable if enabled else gc.disable)()
    try:
        lint_source("import torch\nx = torch.ones(2).half()\n")
        assert states == [False] and gc.isenabled() is enabled

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(engine, "ModuleAnalysis", broken)
        with pytest.raises(RuntimeError):
            lint_source("import torch\n")
        assert gc.isenabled() is enabled  # restored on the way out of a failure too
    finally:
        gc.enable()


# ---------------------------------------------------------------- engine and adapter
def test_a_file_that_never_mentions_torch_is_not_analysed(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("analysed a file without torch")

    monkeypatch.setattr(engine, "ModuleAnalysis", fail)
    checker = AmpChecker(ast.parse("import numpy as np\nx = np.half(1)\n"), ["import numpy as np\n", "x = np.half(1)\n"])
    assert list(checker.run()) == []


def test_flake8_adapter_yields_zero_based_columns_and_full_messages():
    source = "import torch\nx = 1\nif x:\n    s =   torch.cuda.amp.GradScaler()\n"
    results = list(AmpChecker(ast.parse(source), source.splitlines(True)).run())
    assert [(line, col) for line, col, _, _ in results] == [(4, 10)]
    message = results[0][2]
    assert message.startswith("AMP013 deprecated torch.cuda.amp.GradScaler used")
    assert message.endswith("(flake8-amp explain AMP013)") and " -> " in message


def test_a_rule_that_raises_becomes_an_amp000_finding_and_the_others_still_run():
    class Broken(Rule):
        code, name, severity = "AMP999", "broken", Severity.LOW
        summary = why = fix = "x"

        def check(self, analysis):
            raise ValueError("boom")

    class Working(Rule):
        code, name, severity = "AMP998", "working", Severity.LOW
        summary = why = fix = "x"

        def check(self, analysis):
            yield Finding(2, 0, self.code, "found", "fix it")

    findings = lint_tree(ast.parse("import torch\nx = 1\n"), LintOptions(), rules=[Broken(), Working()])
    assert [(f.code, f.line) for f in findings] == [("AMP000", 1), ("AMP998", 2)]
    assert "AMP999" in findings[0].message and "ValueError: boom" in findings[0].message


def test_flake8_end_to_end_with_noqa(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "with torch.autocast('cuda'):\n"
        "    a = model(x.half())\n"
        "    b = model(x.half())  # noqa: AMP001\n"
        "scaler.scale(a + b).backward()\n"
        "old = torch.cuda.amp.GradScaler()\n"
        "older = torch.cuda.amp.GradScaler()  # noqa: AMP013\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "AMP", "--amp-preview=on", str(script)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] + " " + line.split()[1] for line in lines] == [
        f"{script}:3:15 AMP001",
        f"{script}:6:7 AMP013",
    ]


def test_preview_rules_run_only_when_asked_for():
    source = "import torch\nwith torch.autocast('cuda'):\n    y = model(x.half())\nscaler.scale(y).backward()\n"
    assert RULES_BY_CODE["AMP001"].preview and not RULES_BY_CODE["AMP013"].preview
    assert lint_source(source) == []
    assert [(f.line, f.col, f.code) for f in lint_source(source, LintOptions(preview=True))] == [(3, 14, "AMP001")]
    # a preview rule handed over by name still needs preview on: the option is the one switch
    assert lint_tree(ast.parse(source), LintOptions(), rules=[RULES_BY_CODE["AMP001"]]) == []


def test_importing_the_linter_does_not_import_torch():
    code = "import sys, flake8_amp, flake8_amp.plugin, flake8_amp.cli, flake8_amp.rules; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_lint_source_skips_text_without_torch():
    assert lint_source("x = y.half()\n") == []
