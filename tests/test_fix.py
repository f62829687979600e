"""``flake8-amp fix``: each rule's fix pinned on before/after pairs (formatting and comments kept), fixes
idempotent, every fixture and every rule doc's Example fixed into code that parses and no longer raises what
was fixed (the Example into its "Use instead"), the torch floor, and the command: noqa, configuration,
--diff, --check, --unsafe-fixes, exit codes, encodings."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from expectations import FIXTURE_FILES, PROJECT_FOLDERS, copy_project, fixture_arguments, lint_options, project_files
from flake8_amp.engine import LintOptions, lint_source
from flake8_amp.fixes.driver import fix_source
from flake8_amp.fixes.edits import Edit, Fix, FixSafety
from flake8_amp.fixes.torch_floor import ASSUMED, TorchFloor, TorchFloors, requirement_floor
from flake8_amp.rule_docs import FIX_HEADING, read_doc
from flake8_amp.rules import ALL_RULES, RULES_BY_CODE
from flake8_amp.rules.base import Rule
from linter_runs import Run, cli_runner
from test_rule_docs import CODE_BLOCK, section

pytest.importorskip("ast_grep_py")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EVERY_RULE = LintOptions(preview=True)
FIXABLE = [rule.code for rule in ALL_RULES if rule.fix_safety is not None]


def fixed(source: str, *, unsafe: bool = False, floor: tuple[int, int] = ASSUMED, path: str | None = None) -> str:
    return fix_source(source, options=EVERY_RULE, unsafe=unsafe, floor=TorchFloor(floor, "test"), path=path).text


# ---------------------------------------------------------------- each rule's fix, pinned
class Case(NamedTuple):
    before: str
    after: str
    unsafe: bool = False
    floor: tuple[int, int] = ASSUMED


CASES = {
    "AMP013 imports keep their layout and comments, and uses gain the device type": Case(
        """import torch
from torch.cuda.amp import (
    GradScaler,  # the scaler
    autocast,
)

scaler = GradScaler(
    init_scale=2.0**16,
    growth_interval=100,
)
with autocast(True, torch.float16):  # enabled, dtype
    pass
""",
        """import torch
from torch.amp import (
    GradScaler,  # the scaler
    autocast,
)

scaler = GradScaler(
    "cuda",
    init_scale=2.0**16,
    growth_interval=100,
)
with autocast("cuda", enabled=True, dtype=torch.float16):  # enabled, dtype
    pass
""",
    ),
    "AMP013 spelled out, through module aliases, decorators, annotations and isinstance": Case(
        """import torch as th
import torch.cuda.amp as cuda_amp
from torch.cuda import amp
from torch.cuda.amp import custom_fwd, custom_bwd


class Fn(th.autograd.Function):
    @staticmethod
    @custom_fwd
    def forward(ctx, x):
        with amp.autocast(enabled=False):
            return x

    @staticmethod
    @th.cuda.amp.custom_bwd
    def backward(ctx, g):
        return g


def build(kept: th.cuda.amp.GradScaler = None) -> "th.cuda.amp.GradScaler":
    x = "é😀"; scaler = cuda_amp.GradScaler(); cpu = th.cpu.amp.GradScaler(enabled=False)
    with th.cpu.amp.autocast(dtype=th.bfloat16):
        ok = isinstance(scaler, th.cuda.amp.GradScaler)
    return scaler, amp.GradScaler()
""",
        """import torch as th
import torch.amp as cuda_amp
from torch import amp
from torch.amp import custom_fwd, custom_bwd


class Fn(th.autograd.Function):
    @staticmethod
    @custom_fwd(device_type="cuda")
    def forward(ctx, x):
        with amp.autocast("cuda", enabled=False):
            return x

    @staticmethod
    @th.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):
        return g


def build(kept: th.amp.GradScaler = None) -> "th.cuda.amp.GradScaler":
    x = "é😀"; scaler = cuda_amp.GradScaler("cuda"); cpu = th.amp.GradScaler("cpu", enabled=False)
    with th.amp.autocast("cpu", dtype=th.bfloat16):
        ok = isinstance(scaler, th.amp.GradScaler)
    return scaler, amp.GradScaler("cuda")
""",
    ),
    "AMP013 leaves the other names of an import in it, and a use it cannot fix unfixed": Case(
        """import torch
from torch.cuda.amp import autocast, common
from torch.cuda.amp import GradScaler

make_scaler = GradScaler
with autocast():
    print(common)
""",
        """import torch
from torch.cuda.amp import common
from torch.amp import autocast
from torch.cuda.amp import GradScaler

make_scaler = GradScaler
with autocast("cuda"):
    print(common)
""",
    ),
    "AMP013 below torch 2.3 writes version-guarded calls, and autocast as torch.autocast": Case(
        """import torch
from torch.cuda.amp import GradScaler, autocast
from torch.cuda.amp import autocast as amp_autocast

scaler = torch.cuda.amp.GradScaler()
log = print(torch.cuda.amp.GradScaler(enabled=True).get_scale())
with torch.cuda.amp.autocast(), amp_autocast():
    pass
""",
        """import torch
from torch.cuda.amp import GradScaler, autocast
from torch import autocast as amp_autocast

scaler = torch.amp.GradScaler("cuda") if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
log = print((torch.amp.GradScaler("cuda", enabled=True) if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler(enabled=True)).get_scale())
with torch.autocast("cuda"), amp_autocast("cuda"):
    pass
""",  # noqa: E501 - pinned as written
        floor=(2, 0),
    ),
    "AMP013 below 1.10 guards autocast too": Case(
        "import torch\nwith torch.cuda.amp.autocast(enabled=True):\n    pass\n",
        'import torch\nwith (torch.autocast("cuda", enabled=True) if hasattr(torch, "autocast") else '
        "torch.cuda.amp.autocast(enabled=True)):\n    pass\n",
        floor=(1, 8),
    ),
    "AMP013 below 2.3 rewrites an import, a decorator and an annotation only as an unsafe fix": Case(
        """import torch
from torch.cuda.amp import GradScaler, custom_fwd

scaler: torch.cuda.amp.GradScaler = GradScaler()


@custom_fwd
def forward(ctx, x):
    return x
""",
        """import torch
from torch.amp import GradScaler, custom_fwd

scaler: torch.amp.GradScaler = GradScaler("cuda")


@custom_fwd(device_type="cuda")
def forward(ctx, x):
    return x
""",
        unsafe=True,
        floor=(2, 0),
    ),
    "AMP014 adds the device type the module's autocast uses, or cuda": Case(
        """import torch

device = "cuda" if torch.cuda.is_available() else "cpu"


class Scale(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(
        cast_inputs=torch.float32,
    )
    def forward(ctx, x):
        return x

    @staticmethod
    @torch.amp.custom_bwd
    def backward(ctx, g):
        return g


def run(x):
    with torch.autocast(device):
        return Scale.apply(x)
""",
        """import torch

device = "cuda" if torch.cuda.is_available() else "cpu"


class Scale(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(
        device_type=device,
        cast_inputs=torch.float32,
    )
    def forward(ctx, x):
        return x

    @staticmethod
    @torch.amp.custom_bwd(device_type=device)
    def backward(ctx, g):
        return g


def run(x):
    with torch.autocast(device):
        return Scale.apply(x)
""",
    ),
    "AMP004 adds dtype=torch.float32 safely inside an enabled region, unsafely after a cast": Case(
        """import torch
import torch.nn.functional as F


def evaluate(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        p = F.softmax(
            logits,
            dim=-1,
        )
        return p, logits.log_softmax(-1)


def probabilities(x):
    h = x.half()
    return torch.softmax(h, dim=1)
""",
        """import torch
import torch.nn.functional as F


def evaluate(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        p = F.softmax(
            logits,
            dim=-1,
            dtype=torch.float32,
        )
        return p, logits.log_softmax(-1, dtype=torch.float32)


def probabilities(x):
    h = x.half()
    return torch.softmax(h, dim=1)
""",
    ),
    "AMP005 fixes a reduction over every element; casts first where there is no dtype=": Case(
        """import torch


def energy(model, x):
    with torch.autocast("cuda"):
        hidden = model(x)
    total = (hidden * hidden).sum()
    spread = torch.std(hidden + 1)
    per_row = hidden.sum(dim=-1)
    return total, spread, per_row, torch.norm(x, dtype=torch.float16)
""",
        """import torch


def energy(model, x):
    with torch.autocast("cuda"):
        hidden = model(x)
    total = (hidden * hidden).sum(dtype=torch.float32)
    spread = torch.std((hidden + 1).float())
    per_row = hidden.sum(dim=-1)
    return total, spread, per_row, torch.norm(x, dtype=torch.float32)
""",
    ),
    "AMP005 fixes a reduction along a dimension only as an unsafe fix": Case(
        "import torch\n\ndef f(x):\n    h = x.half()\n    return h.cumsum(0)\n",
        "import torch\n\ndef f(x):\n    h = x.half()\n    return h.cumsum(0, dtype=torch.float32)\n",
        unsafe=True,
    ),
    "AMP009 writes the stable op in the spelling used": Case(
        """import torch
import torch.nn.functional as F


def heads(scores):
    w = torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)  # softmax
    lp = torch.log(F.softmax(scores, dim=-1))
    lp2 = scores.softmax(-1).log()
    ls = torch.log(torch.sigmoid(scores))
    ls2 = scores.sigmoid().log()
    probs = torch.softmax(scores, -1)
    kept = torch.log(probs), probs.argmax(-1)
    return w, lp, lp2, ls, ls2, kept
""",
        """import torch
import torch.nn.functional as F


def heads(scores):
    w = torch.softmax(scores, dim=-1)  # softmax
    lp = F.log_softmax(scores, dim=-1)
    lp2 = scores.log_softmax(-1)
    ls = F.logsigmoid(scores)
    ls2 = F.logsigmoid(scores)
    probs = torch.softmax(scores, -1)
    kept = torch.log(probs), probs.argmax(-1)
    return w, lp, lp2, ls, ls2, kept
""",
    ),
    "AMP010 unscales once before clips in the step's block, not before a clip whose step is conditional": Case(
        """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, loss):
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
    scaler.step(opt)
    scaler.update()


def accumulate(i, model, opt, loss):
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if i % 2:
        scaler.step(opt)
        scaler.update()
""",
        """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, loss):
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
    scaler.step(opt)
    scaler.update()


def accumulate(i, model, opt, loss):
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if i % 2:
        scaler.step(opt)
        scaler.update()
""",
    ),
    "AMP012 moves a last backward out of the block, and only a last one": Case(
        """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, x):
    with torch.autocast("cuda"):
        loss = model(x)
        scaler.scale(
            loss
        ).backward()  # the gradients
    scaler.step(opt)
    scaler.update()


def probe(model, opt, x):
    with torch.autocast("cuda"):
        loss = model(x)
        loss.backward()
        opt.step()
""",
        """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, x):
    with torch.autocast("cuda"):
        loss = model(x)
    scaler.scale(
        loss
    ).backward()  # the gradients
    scaler.step(opt)
    scaler.update()


def probe(model, opt, x):
    with torch.autocast("cuda"):
        loss = model(x)
        loss.backward()
        opt.step()
""",
    ),
    "AMP020 adds the scaler in scope after the optimizer's entry, inline or one a line": Case(
        """import torch

scaler = torch.amp.GradScaler("cuda")


def save(model, optimizer, path):
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': 1}, path)


def save_named(model, optimizer, path):
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),  # Adam moments
    }
    torch.save(checkpoint, path)


class Trainer:
    def __init__(self, model):
        self.optimizer = torch.optim.AdamW(model.parameters())
        self.scaler = torch.amp.GradScaler("cuda")

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict()}
""",
        """import torch

scaler = torch.amp.GradScaler("cuda")


def save(model, optimizer, path):
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(), 'step': 1}, path)


def save_named(model, optimizer, path):
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),  # Adam moments
        "scaler": scaler.state_dict(),
    }
    torch.save(checkpoint, path)


class Trainer:
    def __init__(self, model):
        self.optimizer = torch.optim.AdamW(model.parameters())
        self.scaler = torch.amp.GradScaler("cuda")

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
""",
    ),
    "AMP002 hands the loss the logits where the sigmoid feeds nothing else (unsafe)": Case(
        """import torch
import torch.nn as nn
import torch.nn.functional as F

criterion = nn.BCELoss(reduction="sum")
shared = nn.BCELoss()


def step(model, x, y):
    with torch.autocast("cuda"):
        probs = torch.sigmoid(model(x))
        a = criterion(probs, y)
        b = F.binary_cross_entropy(model(x).sigmoid(), y)
        p = torch.sigmoid(model(x))
        c = shared(p, y) + p.mean()
    return a + b + c
""",
        """import torch
import torch.nn as nn
import torch.nn.functional as F

criterion = nn.BCEWithLogitsLoss(reduction="sum")
shared = nn.BCELoss()


def step(model, x, y):
    with torch.autocast("cuda"):
        logits = model(x)
        a = criterion(logits, y)
        b = F.binary_cross_entropy_with_logits(model(x), y)
        p = torch.sigmoid(model(x))
        c = shared(p, y) + p.mean()
    return a + b + c
""",
        unsafe=True,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_fix_is_pinned(name):
    case = CASES[name]
    assert fixed(case.before, unsafe=case.unsafe, floor=case.floor) == case.after


@pytest.mark.parametrize("name", CASES)
def test_fixes_are_idempotent(name):
    case = CASES[name]
    assert fixed(case.after, unsafe=case.unsafe, floor=case.floor) == case.after


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.unsafe])
def test_unsafe_fixes_need_unsafe(name):
    case = CASES[name]
    outcome = fix_source(case.before, options=EVERY_RULE, floor=TorchFloor(case.floor, "test"))
    assert outcome.text != case.after and outcome.unsafe_fixable > 0


def test_every_rule_with_a_fix_has_a_pinned_case():
    assert {name.split()[0] for name in CASES} == set(FIXABLE)


def test_a_rule_has_fix_metadata_exactly_when_it_has_a_fix():
    for rule in ALL_RULES:
        assert (type(rule).rewrite is Rule.rewrite) == (rule.fix_safety is None), rule.code
        if rule.fix_safety is not None:
            assert rule.fix_summary.endswith(".") and rule.fix_safety_reason.endswith("."), rule.code


# ---------------------------------------------------------------- every fixture and every doc Example
def _fixture_modules() -> list[tuple[str, Path]]:
    modules = [(path.stem, path) for path in FIXTURE_FILES]
    for folder in PROJECT_FOLDERS:
        modules += [(f"{folder.name}/{path.relative_to(folder)}", path) for path in project_files(folder)]
    return modules


@pytest.mark.parametrize("name, path", _fixture_modules(), ids=[name for name, _ in _fixture_modules()])
def test_every_fixture_fixes_into_code_that_parses_without_what_was_fixed(name, path, tmp_path):
    if path.parent.parent.name == "projects" or "projects" in path.parts:
        folder = next(folder for folder in PROJECT_FOLDERS if folder in path.parents)
        copy = copy_project(folder, tmp_path) / path.relative_to(folder)
    else:
        copy = tmp_path / path.name
        shutil.copy(path, copy)
    source = copy.read_text(encoding="utf-8")
    options = lint_options(fixture_arguments(source))
    before = Counter(f.code for f in lint_source(source, options, path=str(copy)))
    outcome = fix_source(source, options=options, unsafe=True, path=str(copy))
    assert outcome.error is None and outcome.fix_failures == []
    compile(outcome.text, str(copy), "exec")
    after = Counter(f.code for f in lint_source(outcome.text, options, path=str(copy)))
    for code, count in outcome.fixed.items():
        assert after[code] <= before[code] - min(count, before[code]), code
    assert all(after[code] <= before[code] for code in after), (before, after)
    again = fix_source(outcome.text, options=options, unsafe=True, path=str(copy))
    assert again.text == outcome.text and not again.fixed


def test_the_fixtures_exercise_every_fix():
    fixed_codes = set()
    for _, path in _fixture_modules():
        if "projects" not in path.parts:
            source = path.read_text(encoding="utf-8")
            fixed_codes |= set(fix_source(source, options=lint_options(fixture_arguments(source)), unsafe=True).fixed)
    assert set(FIXABLE) <= fixed_codes


@pytest.mark.parametrize("code", FIXABLE)
def test_the_doc_example_fixes_into_its_use_instead(code):
    doc = read_doc(code)
    example = CODE_BLOCK.findall(section(doc, "## Example"))[0]
    use_instead = CODE_BLOCK.findall(section(doc, "## Use instead"))[0]
    assert fixed(example, unsafe=True) == use_instead


@pytest.mark.parametrize("code", [rule.code for rule in ALL_RULES])
def test_a_doc_has_a_fix_safety_section_exactly_when_its_rule_has_a_fix(code):
    doc = read_doc(code)
    if RULES_BY_CODE[code].fix_safety is None:
        assert FIX_HEADING not in doc
        return
    headings = [doc.index(heading) for heading in ("## Use instead", FIX_HEADING, "## When it stays quiet")]
    assert headings == sorted(headings)
    assert f"marked **{RULES_BY_CODE[code].fix_safety.value}**" in section(doc, FIX_HEADING)


# ---------------------------------------------------------------- the examples
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*_buggy.py")), ids=lambda p: p.name)
def test_a_fixed_example_keeps_only_findings_without_a_safe_fix(path):
    source = path.read_text(encoding="utf-8")
    outcome = fix_source(source, options=EVERY_RULE)
    compile(outcome.text, path.name, "exec")
    assert outcome.changed or path.name in ("finetune_buggy.py", "pretrain_bf16_buggy.py")
    again = fix_source(outcome.text, options=EVERY_RULE)
    assert not again.fixed, "a safe fix was left"
    assert {f.code for f in again.remaining} == {f.code for f in outcome.remaining}


# ---------------------------------------------------------------- the torch floor
@pytest.mark.parametrize(
    "text, floor",
    [
        ("torch>=1.8.0\nnumpy\n", (1, 8)),
        ("torch==2.1.0+cu118", (2, 1)),
        ('dependencies = ["numpy", "torch >= 2.0, <3"]', (2, 0)),
        ("install_requires =\n    torch~=2.3\n    torchvision>=0.5\n", (2, 3)),
        ('torch = "^1.13"', (1, 13)),
        ('torch = { version = ">=2.2", optional = true }', (2, 2)),
        ("torch>=1.10\ntorch==2.4 ; sys_platform == 'linux'\n", (1, 10)),
        ("torchvision>=0.15\npytorch-lightning>=2.0\nimport torch\n", None),
        ("torch<2.0\n", None),
        ("torch\n", None),
    ],
)
def test_the_floor_is_the_lowest_lower_bound_declared(text, floor):
    assert requirement_floor(text) == floor


def test_the_floor_is_read_from_the_nearest_project(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.1"]\n')
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "setup.py").write_text("setup(install_requires=['torch'])\n")
    floors = TorchFloors()
    declared = TorchFloor((2, 1), "pyproject.toml: torch>=2.1")
    assert floors.for_file(str(tmp_path / "pkg" / "sub" / "train.py")) == declared
    assert floors.for_file(str(tmp_path / "other" / "train.py")).assumed
    assert TorchFloors(TorchFloor((1, 8), "--min-torch 1.8")).for_file(str(tmp_path / "x.py")).version == (1, 8)


# ---------------------------------------------------------------- the command
DEPRECATED = "import torch\nscaler = torch.cuda.amp.GradScaler()\n"
DEPRECATED_FIXED = 'import torch\nscaler = torch.amp.GradScaler("cuda")\n'
BCE = (
    "import torch\nimport torch.nn.functional as F\n\ndef f(m, x, y):\n    with torch.autocast('cuda'):\n"
    "        return F.binary_cross_entropy(torch.sigmoid(m(x)), y)\n"
)


@pytest.fixture
def run_fix(monkeypatch, capsys):
    """``flake8-amp fix ARGS`` in-process, from ``cwd``."""
    return cli_runner("fix", monkeypatch, capsys)


def test_fix_writes_the_fixes_and_says_what_it_did(run_fix, tmp_path):
    (tmp_path / "train.py").write_text(DEPRECATED + "with torch.cuda.amp.autocast():\n    pass\n")
    (tmp_path / "clean.py").write_text("import torch\n")
    result = run_fix(".", cwd=tmp_path)
    assert result == Run(0, "", "Fixed 2 findings in 1 file (0 remaining).\n" + _ASSUMED_NOTE.format(n="1 file"))
    assert (tmp_path / "train.py").read_text() == DEPRECATED_FIXED + 'with torch.amp.autocast("cuda"):\n    pass\n'
    assert run_fix(".", cwd=tmp_path) == Run(0, "", "Fixed 0 findings in 0 files (0 remaining).\n")


_ASSUMED_NOTE = (
    "note: no requirement declares the oldest torch for {n}: the fixes assumed torch 2.4 or later "
    "(--min-torch VERSION keeps an older torch working)\n"
)


def test_diff_prints_a_unified_diff_writes_nothing_and_exits_1(run_fix, tmp_path):
    (tmp_path / "setup.cfg").write_text("[options]\ninstall_requires =\n    torch>=2.4\n")
    (tmp_path / "train.py").write_text(DEPRECATED)
    result = run_fix("--diff", "train.py", cwd=tmp_path)
    assert result.status == 1
    assert result.out == (
        "--- train.py\n+++ train.py\n@@ -1,2 +1,2 @@\n import torch\n-scaler = torch.cuda.amp.GradScaler()\n"
        '+scaler = torch.amp.GradScaler("cuda")\n'
    )
    assert result.err == "Would fix 1 finding in 1 file (0 remaining).\n"
    assert (tmp_path / "train.py").read_text() == DEPRECATED
    check = run_fix("--check", "train.py", cwd=tmp_path)
    assert check == Run(1, "", "Would fix 1 finding in 1 file (0 remaining).\n")
    (tmp_path / "train.py").write_text(DEPRECATED_FIXED)
    assert run_fix("--diff", "train.py", cwd=tmp_path) == Run(0, "", "Would fix 0 findings in 0 files (0 remaining).\n")
    assert run_fix("--check", "train.py", cwd=tmp_path).status == 0


NOQA = """import torch
a = torch.cuda.amp.GradScaler()  # noqa
b = torch.cuda.amp.GradScaler()  # noqa: AMP013
c = torch.cuda.amp.GradScaler()  # noqa: AMP010
d = torch.cuda.amp.GradScaler()
from torch.cuda.amp import (
    autocast,  # noqa: AMP013
    GradScaler,
)
with autocast():
    GradScaler()
"""


def test_noqa_comments_are_respected(run_fix, tmp_path):
    (tmp_path / "train.py").write_text(NOQA)
    result = run_fix("--min-torch=2.4", "train.py", cwd=tmp_path)
    assert result == Run(0, "", "Fixed 3 findings in 1 file (0 remaining).\n")
    assert (tmp_path / "train.py").read_text() == """import torch
a = torch.cuda.amp.GradScaler()  # noqa
b = torch.cuda.amp.GradScaler()  # noqa: AMP013
c = torch.amp.GradScaler("cuda")  # noqa: AMP010
d = torch.amp.GradScaler("cuda")
from torch.cuda.amp import (
    autocast,  # noqa: AMP013
)
from torch.amp import GradScaler
with autocast():
    GradScaler("cuda")
"""
    (tmp_path / "train.py").write_text("# flake8: noqa\n" + DEPRECATED)
    assert run_fix("--disable-noqa", "--min-torch=2.4", "train.py", cwd=tmp_path).status == 0
    assert (tmp_path / "train.py").read_text() == "# flake8: noqa\n" + DEPRECATED_FIXED


def test_the_configuration_and_selection_decide_what_is_fixed(run_fix, tmp_path):
    for folder in ("src", "scripts"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.py").write_text(DEPRECATED + BCE)
    (tmp_path / "setup.cfg").write_text(
        "[flake8]\nper-file-ignores =\n    scripts/*: AMP013\n[options]\ninstall_requires = torch>=2.4\n"
    )
    result = run_fix(".", cwd=tmp_path)
    assert result == Run(0, "", "Fixed 1 finding in 1 file (2 remaining; 2 fixable with --unsafe-fixes).\n")
    assert (tmp_path / "scripts" / "train.py").read_text() == DEPRECATED + BCE
    assert (tmp_path / "src" / "train.py").read_text() == DEPRECATED_FIXED + BCE
    result = run_fix("--select=AMP002", "--unsafe-fixes", "scripts", cwd=tmp_path)
    assert result == Run(0, "", "Fixed 1 finding in 1 file (0 remaining).\n")
    assert "binary_cross_entropy_with_logits(m(x), y)" in (tmp_path / "scripts" / "train.py").read_text()
    assert "GradScaler()" in (tmp_path / "scripts" / "train.py").read_text()


def test_the_oldest_torch_declared_or_given_decides_the_spelling(run_fix, tmp_path):
    (tmp_path / "requirements.txt").write_text("torch>=2.0\n")
    (tmp_path / "train.py").write_text(DEPRECATED + "from torch.cuda.amp import GradScaler\n")
    result = run_fix("train.py", cwd=tmp_path)
    assert result == Run(0, "", "Fixed 1 finding in 1 file (1 remaining; 1 fixable with --unsafe-fixes).\n")
    assert (tmp_path / "train.py").read_text() == (
        'import torch\nscaler = torch.amp.GradScaler("cuda") if hasattr(torch, "amp") and hasattr(torch.amp, '
        '"GradScaler") else torch.cuda.amp.GradScaler()\nfrom torch.cuda.amp import GradScaler\n'
    )
    (tmp_path / "train.py").write_text(DEPRECATED)
    assert run_fix("--min-torch=2.3", "train.py", cwd=tmp_path).status == 0
    assert (tmp_path / "train.py").read_text() == DEPRECATED_FIXED


def test_a_file_that_does_not_parse_is_left_untouched(run_fix, tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nscaler = torch.cuda.amp.GradScaler(\n")
    (tmp_path / "train.py").write_text(DEPRECATED)
    result = run_fix("--min-torch=2.4", ".", cwd=tmp_path)
    assert result.status == 1 and result.out == ""
    assert result.err.startswith("./broken.py: not fixed: it does not parse (line 2): SyntaxError: ")
    assert result.err.endswith("Fixed 1 finding in 1 file (0 remaining).\n")
    assert (tmp_path / "broken.py").read_text() == "import torch\nscaler = torch.cuda.amp.GradScaler(\n"
    assert (tmp_path / "train.py").read_text() == DEPRECATED_FIXED


def test_encoding_byte_order_mark_line_endings_and_non_ascii_are_kept(run_fix, tmp_path):
    source = '# -*- coding: utf-8 -*-\r\nimport torch\r\nname = "é😀"; s = torch.cuda.amp.GradScaler()  # ü\r\n'
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbf" + source.encode("utf-8"))
    (tmp_path / "latin.py").write_bytes(source.replace("utf-8", "latin-1").replace("😀", "").encode("latin-1"))
    assert run_fix("--min-torch=2.4", ".", cwd=tmp_path).status == 0
    expected = source.replace("torch.cuda.amp.GradScaler()", 'torch.amp.GradScaler("cuda")')
    assert (tmp_path / "bom.py").read_bytes() == b"\xef\xbb\xbf" + expected.encode("utf-8")
    latin = expected.replace("utf-8", "latin-1").replace("😀", "")
    assert (tmp_path / "latin.py").read_bytes() == latin.encode("latin-1")


def test_parallel_jobs_fix_what_one_job_fixes(run_fix, tmp_path):
    for jobs in (1, 2):
        folder = tmp_path / str(jobs)
        shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("*_fixed.py", "__pycache__"))
        (folder / "setup.cfg").write_text("[options]\ninstall_requires = torch>=2.4\n")
        run_fix(f"--jobs={jobs}", "--amp-preview=on", ".", cwd=folder)
    for path in sorted((tmp_path / "1").glob("*.py")):
        assert path.read_text() == (tmp_path / "2" / path.name).read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-torch=two", "train.py"], "error: --min-torch 'two' is not a torch version such as 2.1"),
        (["-"], "flake8-amp fix: error: fix edits files in place: name them (stdin is not read)"),
        (["--no-such-option", "train.py"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_exit_2_with_one_line(run_fix, tmp_path, args, message):
    (tmp_path / "train.py").write_text(DEPRECATED)
    result = run_fix(*args, cwd=tmp_path)
    assert result.status == 2 and message in result.err and "Traceback" not in result.err
    assert (tmp_path / "train.py").read_text() == DEPRECATED


def test_without_ast_grep_fix_says_what_to_install(run_fix, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec

    def without_ast_grep(name, *args):
        return None if name == "ast_grep_py" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_ast_grep)
    (tmp_path / "train.py").write_text(DEPRECATED)
    assert run_fix("train.py", cwd=tmp_path) == Run(
        2, "", "flake8-amp fix: error: fixes need ast-grep-py, which is not installed: pip install 'flake8-amp[fix]'\n"
    )


def test_the_linter_never_imports_ast_grep():
    code = (
        "import sys, flake8_amp.plugin, flake8_amp.check, pylint_amp; from flake8_amp.engine import lint_source; "
        "lint_source('import torch\\nx = torch.cuda.amp.GradScaler()\\n'); print('ast_grep_py' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_help_lists_the_options(run_fix, tmp_path):
    result = run_fix("--help", cwd=tmp_path)
    assert result.status == 0 and result.out.startswith("usage: flake8-amp fix [options] file file ...")
    for option in ("--diff", "--check", "--unsafe-fixes", "--min-torch", "--select", "--per-file-ignores"):
        assert option in result.out
    assert "--show-source" not in result.out and "--format" not in result.out


def test_fixes_parse_as_the_fix_claims(tmp_path):
    """A module where a fix would not parse is left as it was: simulated by a rule whose edit breaks it."""
    class Broken(type(RULES_BY_CODE["AMP013"])):
        def rewrite(self, finding, module):
            return Fix((Edit(0, 0, "def ("),), FixSafety.SAFE)

    outcome = fix_source(DEPRECATED, rules=[Broken()])
    assert outcome.text == DEPRECATED and not outcome.fixed
    assert outcome.error == (
        "the fixes for AMP013 produced code that does not parse (line 1): left unchanged; please report it with this file"
    )
    ast.parse(outcome.text)


# ---------------------------------------------------------------- regressions found in review
def test_diff_is_in_the_files_own_bytes_so_that_it_applies(run_fix, tmp_path):
    """Context lines as on disk: the byte-order mark kept, lines split where the tokenizer splits them (a
    form feed is no line break), a latin-1 file's diff in latin-1."""
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbf" + DEPRECATED.encode())
    (tmp_path / "ff.py").write_text("import torch\n\x0c\nscaler = torch.cuda.amp.GradScaler()\n")
    result = run_fix("--min-torch=2.4", "--diff", "bom.py", "ff.py", cwd=tmp_path)
    assert result.out == (
        "--- bom.py\n+++ bom.py\n@@ -1,2 +1,2 @@\n \ufeffimport torch\n-scaler = torch.cuda.amp.GradScaler()\n"
        '+scaler = torch.amp.GradScaler("cuda")\n'
        "--- ff.py\n+++ ff.py\n@@ -1,3 +1,3 @@\n import torch\n \x0c\n-scaler = torch.cuda.amp.GradScaler()\n"
        '+scaler = torch.amp.GradScaler("cuda")\n'
    )
    from flake8_amp.fixes.command import FileFix, _diff

    latin = FileFix("l.py", before='s = "\xe9"\nx = 1', after='s = "\xe9"\nx = 2', encoding="iso-8859-1")
    assert _diff(latin) == (
        b'--- l.py\n+++ l.py\n@@ -1,2 +1,2 @@\n s = "\xe9"\n-x = 1\n\\ No newline at end of file\n'
        b"+x = 2\n\\ No newline at end of file\n"
    )


def test_diff_applies_with_patch(run_fix, tmp_path):
    if shutil.which("patch") is None:
        pytest.skip("no patch program")
    source = b"\xef\xbb\xbfimport torch\r\n\x0c\r\nname = '\xc3\xa9'; s = torch.cuda.amp.GradScaler()\r\n"
    (tmp_path / "train.py").write_bytes(source)
    diff = subprocess.run(
        [sys.executable, "-c", "import sys; from flake8_amp.cli import main; sys.exit(main())", "fix", "--min-torch=2.4",
         "--diff", "train.py"],
        cwd=tmp_path, capture_output=True, check=False,
    ).stdout
    subprocess.run(["patch", "-s", "-p0"], input=diff, cwd=tmp_path, check=True)
    assert (tmp_path / "train.py").read_bytes() == source.replace(b"torch.cuda.amp.GradScaler()",
                                                                  b'torch.amp.GradScaler("cuda")')


def test_amp010_unscales_once_for_clips_apart_and_not_before_a_misplaced_unscale():
    apart = """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, loss):
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 1.0)
    n = 0
    torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
"""
    assert fixed(apart) == apart.replace(
        "    torch.nn.utils.clip_grad_norm_(model.encoder", "    scaler.unscale_(opt)\n    torch.nn.utils.clip_grad_norm_(model.encoder"
    )
    misplaced = """import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, opt, loss):
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
"""
    assert fixed(misplaced) == misplaced  # a second unscale_ before the step raises RuntimeError


def test_amp009_leaves_a_softmax_over_several_dimensions():
    source = (
        "import torch\n\ndef f(s):\n    a = torch.exp(s) / torch.exp(s).sum((1, 2), keepdim=True)\n"
        "    b = torch.exp(s) / torch.exp(s).sum(dim=None, keepdim=True)\n    return a, b\n"
    )
    assert fixed(source) == source  # torch.softmax takes one int dim


def test_amp013_a_backslash_continued_import_split_in_two_parses():
    source = "import torch\nfrom torch.cuda.amp import autocast, \\\n    GradScaler\nscaler = GradScaler()\nwith autocast():\n    pass\n"
    assert fixed(source, floor=(2, 3)) == (
        "import torch\nfrom torch import autocast\nfrom torch.amp import GradScaler\n"
        'scaler = GradScaler("cuda")\nwith autocast("cuda"):\n    pass\n'
    )


def test_amp013_an_import_fix_leaves_the_uses_another_import_binds():
    source = """from torch.cuda.amp import autocast

def f(m, x):
    with autocast():
        return m(x)

def g(m, x):
    from torch.cuda.amp import autocast  # noqa: AMP013
    with autocast():
        return m(x)
"""
    noqa = lambda findings, text: [f for f in findings if f.line != 8]  # noqa: E731
    outcome = fix_source(source, options=EVERY_RULE, wanted=noqa, floor=TorchFloor((2, 4), "test"))
    assert outcome.text == source.replace("from torch.cuda.amp import autocast\n\ndef f", "from torch.amp import autocast\n\ndef f", 1).replace(
        "with autocast():\n        return m(x)\n\ndef g", 'with autocast("cuda"):\n        return m(x)\n\ndef g', 1
    )


@pytest.mark.parametrize(
    "source, path",
    [
        ("from torch.cuda.amp import autocast, custom_fwd  # for older torch\n", "compat.py"),
        ("from torch.cuda.amp import autocast\n__all__ = ['autocast']\nwith autocast():\n    pass\n", "amp.py"),
        ("import torch\nfrom torch.cuda.amp import autocast\n", "__init__.py"),
    ],
)
def test_amp013_a_reexported_name_gets_an_unsafe_fix(source, path, tmp_path):
    """Modules importing it from here call it without the device type torch.amp's needs."""
    (tmp_path / path).write_text(source)
    outcome = fix_source(source, options=EVERY_RULE, floor=TorchFloor((2, 4), "test"), path=str(tmp_path / path))
    assert outcome.text == source and outcome.unsafe_fixable >= 1
    assert "from torch.amp import" in fix_source(source, options=EVERY_RULE, unsafe=True, path=str(tmp_path / path)).text


@pytest.mark.parametrize(
    "text, floor", [("torch>=2\n", (2, 0)), ("torch==2.*\n", (2, 0)), ('torch = "^2"', (2, 0)), ("torch (>=1.8)", (1, 8))]
)
def test_the_floor_reads_a_major_alone_and_a_parenthesised_requirement(text, floor):
    assert requirement_floor(text) == floor
