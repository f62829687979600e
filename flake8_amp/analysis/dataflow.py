"""How a fact about an expression follows from the facts about its parts.

Whether a value is float16, which constant it stands for, whether a function trains: each is a function
of the thing's parts (operands, receivers, arguments; for a name, the bindings that reach it; for a
function, the functions it calls). :func:`evaluate` computes such a fact bottom-up with an explicit
stack and a memo shared by every query of the module, so that a chain of 50,000 statements
``x = x + 1e-8`` or a method chain as deep as Python can parse costs time linear in its size, and never
a RecursionError.
"""

from __future__ import annotations

from typing import Callable, Hashable, MutableMapping, MutableSet, TypeVar

FactT = TypeVar("FactT")
Node = Hashable


def evaluate(
    root: Node,
    parts: Callable[[Node], list],
    combine: Callable[[Node, MutableMapping[Node, FactT]], FactT],
    memo: MutableMapping[Node, FactT],
    pending: MutableSet[Node],
) -> FactT | None:
    """The fact for ``root``: ``combine(node, memo)`` once the facts of ``parts(node)`` are in ``memo``.

    ``pending`` holds the nodes being evaluated, and is shared by every evaluation over ``memo``: one
    fact's ``combine`` may ask another fact of the same kind (a function's facts ask whether the call it
    returns computes a loss, which asks that function's facts). A part that is pending (a cycle, such as
    ``self.h = self.h.half()``, whose binding reaches its own use, or two functions calling each other)
    is not waited for: ``combine`` finds no entry for it in ``memo`` and must read that as "not known";
    a root that is pending gives None.
    """
    if root in memo:
        return memo[root]
    if root in pending:
        return None
    stack = [root]
    while stack:
        node = stack[-1]
        if node in memo:
            stack.pop()
            continue
        if node not in pending:
            pending.add(node)
            for part in parts(node):
                if part is not None and part not in memo and part not in pending:
                    stack.append(part)
            continue
        stack.pop()
        memo[node] = combine(node, memo)
        pending.discard(node)
    return memo.get(root)
