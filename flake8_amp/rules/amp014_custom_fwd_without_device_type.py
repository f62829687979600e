"""AMP014: torch.amp.custom_fwd / custom_bwd without device_type=."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Iterator

from ..analysis.bindings import Bindings
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.torch_api import AUTOCAST_CONSTRUCTORS
from ..fixes.edits import Edit, Fix, FixSafety
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, crashed_here
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule

_NEEDS_DEVICE_TYPE = {
    "torch.amp.custom_fwd": "custom_fwd",
    "torch.amp.custom_bwd": "custom_bwd",
    "torch.amp.autocast_mode.custom_fwd": "custom_fwd",
    "torch.amp.autocast_mode.custom_bwd": "custom_bwd",
}


class CustomFwdWithoutDeviceType(Rule):
    code = "AMP014"
    name = "custom-fwd-without-device-type"
    severity = Severity.HIGH
    summary = "torch.amp.custom_fwd / custom_bwd without device_type="
    why = "device_type is a required keyword of torch.amp.custom_fwd/custom_bwd: the module fails with TypeError at import"
    fix = "pass device_type='cuda' (or the device you train on)"
    # The module fails at import, tests included.
    exempt_in_tests = False
    low_precision_hazard = False

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "adds `device_type=` with the device the module's autocast regions use: a string literal, or a "
        "module-level name bound before the decorator (`device_type=device`); `\"cuda\"` where the module "
        "names none, or several."
    )
    fix_safety_reason = (
        "Without it the module raises TypeError when it is imported, so no behaviour is lost, and the "
        "device type only picks whose autocast state the decorator reads."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        decorator = finding.node
        device = _module_device(decorator, module.analysis)
        text = f"device_type={device}"
        if isinstance(decorator, ast.Call):
            edit = module.insert_argument(decorator, text, keyword=True)
            return Fix((edit,)) if edit is not None else None
        end = module.end(decorator)  # a bare @torch.amp.custom_fwd
        return Fix((Edit(end, end, f"({text})"),))

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the TypeError the decorator raises when the module is imported
        return crashed_here(evidence) or Verdict(
            Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: the decorator raised no error (this torch accepts it)")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        for function in analysis.nodes(ast.FunctionDef) + analysis.nodes(ast.AsyncFunctionDef):
            for decorator in function.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = _NEEDS_DEVICE_TYPE.get(analysis.resolve(target) or "")
                if name is None:
                    continue
                if isinstance(decorator, ast.Call) and any(kw.arg in ("device_type", None) for kw in decorator.keywords):
                    continue  # device_type given (or passed through **kwargs)
                yield self.finding(
                    decorator,
                    f"@torch.amp.{name} without device_type= raises TypeError when the module is imported",
                    fix=f"use @torch.amp.{name}(device_type='cuda'"
                    + (", cast_inputs=...)" if name == "custom_fwd" else ")"),
                )


def _module_device(decorator: ast.AST, analysis: ModuleAnalysis) -> str:
    """The device type expression the module's autocast regions use, where the decorator can use it too:
    a string literal, or a module-level name bound before the decorator; ``"cuda"`` where the module
    names none of those, or several."""
    devices = set()
    for call in analysis.calls_to(AUTOCAST_CONSTRUCTORS):
        implied = AUTOCAST_CONSTRUCTORS[analysis.resolve(call.func)]  # type: ignore[index]
        if implied is not None:  # torch.cuda.amp.autocast()
            devices.add(f'"{implied}"')
            continue
        keywords = {kw.arg: kw.value for kw in call.keywords}
        devices.add(_usable(call.args[0] if call.args else keywords.get("device_type"), decorator, analysis))
    devices.discard(None)
    return devices.pop() if len(devices) == 1 else '"cuda"'


def _usable(device: ast.AST | None, decorator: ast.AST, analysis: ModuleAnalysis) -> str | None:
    """``device`` as the decorator can write it: a string literal, or a name whose every binding reaching
    the autocast call is made at the module's top level before the decorator (the class body runs then)."""
    if isinstance(device, ast.Constant) and isinstance(device.value, str):
        return f'"{device.value}"'
    if not isinstance(device, ast.Name):
        return None  # an attribute or a call may not exist yet where the class body runs
    reaching = analysis.derived(Bindings).reaching(device)
    before = (decorator.lineno, 0)  # type: ignore[attr-defined]
    if reaching and all(binding.scope is None and binding.position < before for binding in reaching):
        return device.id
    return None
