"""Which bindings reach a read: the facts every dataflow question is built on."""

from __future__ import annotations

import ast
import textwrap

from flake8_amp.analysis.bindings import Bindings, alternatives
from flake8_amp.analysis.module_analysis import ModuleAnalysis


def reaching_texts(source: str, marker: str = "use") -> list[str | None]:
    """The values (as source) reaching the argument of the first ``use(...)`` call; None for an unknown
    value (a parameter, a loop target)."""
    tree = ast.parse(textwrap.dedent(source))
    analysis = ModuleAnalysis(tree)
    call = next(c for c in analysis.calls if isinstance(c.func, ast.Name) and c.func.id == marker)
    bindings = analysis.derived(Bindings)
    return sorted(
        (ast.unparse(b.value) if isinstance(b.value, ast.expr) else None for b in bindings.reaching(call.args[0])),
        key=str,
    )


def test_the_last_binding_before_a_read_hides_the_earlier_ones():
    assert reaching_texts("x = a\nx = b\nuse(x)\nx = c\n") == ["b"]


def test_a_binding_in_a_branch_lets_the_earlier_one_through():
    assert reaching_texts("x = a\nif c:\n    x = b\nuse(x)\n") == ["a", "b"]


def test_both_arms_of_an_if_hide_what_came_before():
    assert reaching_texts("x = z\nif c:\n    x = a\nelse:\n    x = b\nuse(x)\n") == ["a", "b"]


def test_a_binding_in_the_other_arm_never_reaches():
    assert reaching_texts("x = a\nif c:\n    x = b\nelse:\n    use(x)\n") == ["a"]


def test_a_loop_may_not_run():
    assert reaching_texts("x = a\nfor i in r:\n    x = b\nuse(x)\n") == ["a", "b"]


def test_a_statement_reads_the_binding_before_itself():
    assert reaching_texts("x = a\nx = use(x)\n") == ["a"]


def test_parameters_loop_targets_and_with_targets_are_bindings_of_unknown_value():
    assert reaching_texts("def f(x):\n    use(x)\n") == [None]
    assert reaching_texts("for x in xs:\n    use(x)\n") == [None]
    assert reaching_texts("with open(p) as x:\n    use(x)\n") == [None]


def test_a_function_reads_a_module_name_as_the_module_leaves_it():
    source = """
    model = None
    def train():
        use(model)
    model = Net()
    if __name__ == "__main__":
        model = Net().half()
    """
    assert reaching_texts(source) == ["Net()", "Net().half()"]


def test_a_name_the_function_binds_is_local_to_it():
    assert reaching_texts("x = a\ndef f():\n    use(x)\n    x = b\n") == []  # UnboundLocalError in Python


def test_global_declarations_bind_the_module_name():
    source = "x = a\ndef f():\n    global x\n    x = b\ndef g():\n    use(x)\n"
    assert reaching_texts(source) == ["a", "b"]  # b once f() has run, a before


def test_comprehension_variables_belong_to_the_comprehension():
    assert reaching_texts("x = a\ny = [use(x) for x in xs]\n") == []


def test_self_attributes_see_every_binding_in_the_module():
    source = """
    class A:
        def __init__(self):
            self.h = a
        def reset(self):
            self.h = b
        def f(self):
            use(self.h)
    """
    assert reaching_texts(source) == ["a", "b"]


def test_in_place_module_casts_rebind_the_module():
    assert reaching_texts("model = Net()\nmodel.half()\nuse(model)\n") == ["model.half()"]


def test_a_chain_of_fifty_thousand_statements_reads_in_linear_time():
    body = "x = x + 1e-8\n" * 50_000
    tree = ast.parse("x = a\n" + body + "use(x)\n")
    analysis = ModuleAnalysis(tree)
    bindings = analysis.derived(Bindings)
    reads = [node for node in analysis.nodes(ast.Name) if node.id == "x" and isinstance(node.ctx, ast.Load)]
    assert all(len(bindings.reaching(read)) == 1 for read in reads)


def test_reads_reached_by_is_the_reverse_of_reaching():
    tree = ast.parse("x = a\nuse(x)\nx = b\nuse(x)\nprint(x)\n")
    analysis = ModuleAnalysis(tree)
    bindings = analysis.derived(Bindings)
    first, second = bindings.bindings_of("x")
    assert [read.lineno for read in bindings.reads_reached_by(first)] == [2]
    assert [read.lineno for read in bindings.reads_reached_by(second)] == [4, 5]


def test_alternatives_of_conditional_values():
    value = ast.parse("a if c else (b or d)", mode="eval").body
    assert [ast.unparse(v) for v in alternatives(value)] == ["a", "b", "d"]


def test_the_iterable_a_comprehension_binds_a_name_to():
    from flake8_amp.analysis.bindings import comprehension_iterable

    tree = ast.parse("def f(outputs, y):\n    return [g(o, y) for os in outputs for o in os]\n")
    analysis = ModuleAnalysis(tree)
    names = {node.id: node for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert ast.unparse(comprehension_iterable(names["o"], "o", analysis)) == "os"
    assert ast.unparse(comprehension_iterable(names["os"], "os", analysis)) == "outputs"
    assert comprehension_iterable(names["y"], "y", analysis) is None  # a parameter, not the comprehension's
