"""The one evaluator every fact about an expression goes through: bottom-up, memoised, no recursion."""

from __future__ import annotations

from flake8_amp.analysis.dataflow import evaluate


def test_a_chain_a_hundred_thousand_long_is_evaluated_without_recursion():
    parts = {i: [i + 1] for i in range(100_000)}
    memo: dict = {}
    combine = lambda node, known: known.get(node + 1, 0) + 1  # noqa: E731
    assert evaluate(0, lambda node: parts.get(node, []), combine, memo, set()) == 100_001  # nodes 0..100000
    assert len(memo) == 100_001


def test_shared_parts_are_computed_once():
    calls = []
    parts = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}

    def combine(node, known):
        calls.append(node)
        return 1 + sum(known[part] for part in parts[node])

    assert evaluate("a", parts.__getitem__, combine, {}, set()) == 5
    assert sorted(calls) == ["a", "b", "c", "d"]


def test_a_cycle_reads_as_not_known():
    parts = {"a": ["b"], "b": ["a"]}
    combine = lambda node, known: ("known", known.get(parts[node][0]))  # noqa: E731
    memo: dict = {}
    assert evaluate("a", parts.__getitem__, combine, memo, set()) == ("known", ("known", None))


def test_a_root_asked_for_while_it_is_being_evaluated_gives_none():
    memo: dict = {}
    pending: set = set()

    def combine(node, known):
        # a fact whose computation asks for itself again (a function whose summary asks its own call)
        return evaluate("a", lambda n: [], lambda n, k: "inner", memo, pending)

    assert evaluate("a", lambda node: [], combine, memo, pending) is None
    assert memo["a"] is None
