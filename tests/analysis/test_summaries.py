"""What functions and classes do, so that rules ask facts instead of names."""

from __future__ import annotations

import ast
import json
import textwrap

from flake8_amp.analysis.module_analysis import ModuleAnalysis
from flake8_amp.analysis.summaries import Summaries

SOURCE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from .ops import FusedDense


def scaled_backward(scaler, loss):
    scaler.scale(loss).backward()


def train_step(scaler, model, optimizer, x):
    loss = distillation_term(model(x), x)
    scaled_backward(scaler, loss)
    scaler.step(optimizer)
    scaler.update()


def distillation_term(logits, teacher):
    return F.kl_div(F.log_softmax(logits, -1), teacher, reduction="batchmean") * 4.0


def build():
    model = Net().half()
    return model


def evaluate(model, x):
    with torch.no_grad():
        return model(x)


class Head(nn.Module):
    def forward(self, x):
        return helper(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, x):
        return self.head(FusedDense.apply(x, x))


def helper(x):
    return x


class Trainer:
    def __init__(self, model):
        self.optimizer = torch.optim.AdamW(model.parameters())
        self.scaler = torch.amp.GradScaler("cuda")

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict()}


model = Net()


def run(x):
    with torch.autocast("cuda", dtype=torch.float16):
        return model(x)
'''


def summaries() -> tuple[ModuleAnalysis, Summaries]:
    analysis = ModuleAnalysis(ast.parse(textwrap.dedent(SOURCE)))
    return analysis, analysis.derived(Summaries)


def function(summaries: Summaries, name: str) -> ast.AST:
    return summaries.definitions[name]


def test_function_facts_follow_the_calls_within_the_module():
    _, found = summaries()
    assert found.facts(function(found, "scaled_backward"))["scales_loss"]
    step = found.facts(function(found, "train_step"))
    assert step["trains"] and step["scales_loss"] and step["steps_scaler"]  # through scaled_backward()
    assert found.facts(function(found, "distillation_term"))["computes_loss"]  # a loss times a constant
    assert found.facts(function(found, "build"))["returns_half"]
    evaluate = found.facts(function(found, "evaluate"))
    assert not evaluate["trains"] and not evaluate["computes_loss"]


def test_call_references():
    analysis, found = summaries()
    references = {ast.unparse(call): found.call_reference(call) for call in analysis.calls}
    assert references["scaled_backward(scaler, loss)"] == "@scaled_backward"
    assert references["model(x)"] in ("@Net.__call__", None)  # `model` is a parameter in train_step
    assert references["self.head(FusedDense.apply(x, x))"] == "@Head.__call__"  # self.head = Head()
    assert references["FusedDense.apply(x, x)"] == ".ops.FusedDense.forward"  # a relative import
    assert references["helper(x)"] == "@helper"


def test_functions_called_inside_an_autocast_region_inherit_it():
    analysis, found = summaries()
    # run() calls model (a Net) under float16 autocast: Net.forward, then Head.forward through self.head,
    # then helper() through Head.forward
    for name in ("Net.forward", "Head.forward", "helper"):
        region = found.inherited_region(function(found, name))
        assert region is not None and region.dtype == "float16" and region.inherited, name
        assert region.reason() == f" ({name.rpartition('.')[2]}() runs under the autocast region at line 65)"
    assert found.inherited_region(function(found, "evaluate")) is None
    statement = function(found, "helper").body[0]
    assert analysis.context(statement).in_enabled_autocast


def test_class_facts_say_what_state_dict_holds():
    _, found = summaries()
    facts = found.class_facts(function(found, "Trainer"))
    assert facts == {"owns_scaler": True, "state_dict": {"optimizer": True, "scaler": False}, "inherits_state_dict": False}
    assert found.class_facts(function(found, "Net"))["state_dict"] is None


def test_module_facts_are_plain_data_for_the_disk_cache():
    _, found = summaries()
    facts = found.module_facts()
    assert json.loads(json.dumps(facts)) == facts
    assert facts["functions"]["train_step"]["calls"] == sorted(
        {"@distillation_term", "@scaled_backward"} | set(facts["functions"]["train_step"]["calls"])
    )
    assert facts["classes"]["Net"]["bases"] == ["torch.nn.Module"]
    # the call under float16 autocast at line 65, in a function that steps no optimizer (run() only infers)
    assert ["@Net.__call__", "cuda", "float16", 65, False] in facts["autocast_calls"]
    assert facts["imports"]["FusedDense"] == ".ops.FusedDense"
    assert {".ops", ".ops.FusedDense", "torch", "torch.nn", "torch.nn.functional"} <= set(facts["imported_modules"])


FLOAT32_SOURCE = '''
import torch
import torch.nn.functional as F
from einops import rearrange


def compute_loss(output, label):
    return -F.cosine_similarity(output.float(), label.to(torch.float32), dim=-1).mean()


def half_cast_one(output, label):
    return F.mse_loss(output.float(), label)


def rebinds(output):
    output = output.float()
    return output.mean()


def rebinds_after_a_raw_read(output):
    peak = output.abs().max()
    output = output.float()
    return output.mean() / peak


def gan_loss(real_outputs, fake_outputs, weights):
    loss = 0
    for real, fake in zip(real_outputs, fake_outputs):
        real = real.float()
        loss += torch.mean((1 - real) ** 2) + torch.mean(fake.float() ** 2)
    for i, w in enumerate(weights):
        loss = loss * w
    return loss


def feature_loss(maps_real, maps_fake):
    loss = 0
    for real, fake in zip(maps_real, maps_fake):
        for r, g in zip(real, fake):
            loss += torch.mean(torch.abs(r.float().detach() - g.float()))
    return loss


class Criterion:
    def loss(self, logits, target):
        return F.cross_entropy(logits.float(), target.float())


def ppo_loss(advantages, ratio):
    return torch.mean(torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.2)))


def through_ppo(advantages, ratio):
    return ppo_loss(advantages, ratio) * 0.5


def squared(x):
    return (x ** 2).mean()


def via_a_package(x):
    return rearrange(x, "b n -> n b").mean()
'''


def test_a_parameter_read_only_through_a_float32_cast_is_a_fact_of_its_function():
    analysis = ModuleAnalysis(ast.parse(FLOAT32_SOURCE))
    found = analysis.derived(Summaries)
    names = ("compute_loss", "half_cast_one", "rebinds", "rebinds_after_a_raw_read", "Criterion.loss", "gan_loss", "feature_loss")
    facts = {name: found.float32_parameters(function(found, name)) for name in names}
    # positions in a call: a method's self is not one of them; `x = x.float()` reads the argument through
    # a cast (later reads see the float32 value), unless the argument was read raw before; lists read
    # element by element through zip(), and nested; `weights` is multiplied with as it comes
    assert facts == {
        "compute_loss": [0, 1],
        "half_cast_one": [0],
        "rebinds": [0],
        "rebinds_after_a_raw_read": [],
        "Criterion.loss": [0, 1],
        "gan_loss": [0, 1],
        "feature_loss": [0, 1],
    }


def test_whether_a_function_runs_an_op_autocast_would_run_in_float32():
    analysis = ModuleAnalysis(ast.parse(FLOAT32_SOURCE))
    found = analysis.derived(Summaries)
    runs = {name: found.facts(function(found, name))["autocast_float32_ops"] for name in ("compute_loss", "ppo_loss", "through_ppo", "squared", "via_a_package")}
    # cosine_similarity is on the list; elementwise ops, clamp, maximum and mean are not (through_ppo asks
    # ppo_loss); `**` is pow, on the list; a package's function may run anything
    assert runs == {"compute_loss": True, "ppo_loss": False, "through_ppo": False, "squared": True, "via_a_package": True}


def test_whether_a_function_steps_an_optimizer():
    source = textwrap.dedent('''
        import time
        from .trainer import optimizer_step


        def probe(model, x):
            start = time.perf_counter()
            model(x).sum().backward()
            return time.perf_counter() - start


        def measure(model, x):
            return probe(model, x)


        def train(model, optimizer, x):
            model(x).sum().backward()
            optimizer.step()


        def train_through_a_helper(model, x):
            measure(model, x)
            optimizer_step(model)


        def loop(model, optimizer, x):
            train(model, optimizer, x)
    ''')
    found = ModuleAnalysis(ast.parse(source)).derived(Summaries)
    steps = {name: found.steps(node) for name, node in found.definitions.items()}
    assert steps == {"probe": False, "measure": False, "train": True, "train_through_a_helper": True, "loop": True}


def test_which_parameters_a_function_hands_to_torch_save():
    source = textwrap.dedent('''
        import torch


        def save_checkpoint(state, is_best, save_dir):
            torch.save(state, save_dir + "/last.pth")


        class Saver:
            def save(self, path, obj):
                torch.save(obj, path)


        def rebinds(state, path):
            state = {"wrapped": state}
            torch.save(state, path)
    ''')
    found = ModuleAnalysis(ast.parse(source)).derived(Summaries)
    saved = {name: found.facts(node)["saved_parameters"] for name, node in found.definitions.items() if name != "Saver"}
    # positions in a call (a method's self is not one); a rebound name is not the parameter any more
    assert saved == {"save_checkpoint": [0], "Saver.save": [1], "rebinds": []}
