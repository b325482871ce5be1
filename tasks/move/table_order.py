"""The order rows are copied in: every table after the tables its foreign keys point to.

Why: PostgreSQL checks a foreign key at the end of each COPY statement, so a table must arrive
after its parents. Letta's schema has a cycle (``block.current_history_entry_id`` ->
``block_history``, ``block_history.block_id`` -> ``block``) and self-references; the foreign
keys inside a cycle (and a table's keys to itself, which a batch boundary could split) are
dropped for the copy and added back after it, in the same transaction: ``ADD CONSTRAINT``
checks every row, so nothing is trusted that was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForeignKey:
    """One foreign-key constraint: ``table`` references ``parent``."""

    name: str
    table: str
    parent: str
    definition: str = ""


@dataclass(frozen=True)
class CopyOrder:
    """The tables in copy order, and the keys to drop during the copy and add back after."""

    tables: list[str]
    deferred: list[ForeignKey]


def _strongly_connected(tables: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative: no recursion limit on a wide schema)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in tables:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def copy_order(tables: list[str], keys: list[ForeignKey]) -> CopyOrder:
    """Parents before children (ties by name, so a plan reads the same every run); keys
    within a cycle and self-references deferred. Keys to tables outside ``tables`` are
    ignored (they are not copied)."""
    known = set(tables)
    inside = [k for k in keys if k.table in known and k.parent in known]
    edges: dict[str, set[str]] = {t: set() for t in tables}
    for key in inside:
        if key.table != key.parent:
            edges[key.table].add(key.parent)
    component_of: dict[str, int] = {}
    for number, component in enumerate(_strongly_connected(sorted(tables), edges)):
        for table in component:
            component_of[table] = number
    deferred = [
        k for k in inside if k.table == k.parent or component_of[k.table] == component_of[k.parent]
    ]
    deferred_names = {(k.table, k.name) for k in deferred}
    needs: dict[str, set[str]] = {t: set() for t in tables}
    for key in inside:
        if (key.table, key.name) not in deferred_names:
            needs[key.table].add(key.parent)
    ordered: list[str] = []
    done: set[str] = set()
    while len(ordered) < len(tables):
        ready = sorted(t for t in tables if t not in done and needs[t] <= done)
        if not ready:  # cannot happen once cycles are deferred; kept as a guard
            raise RuntimeError(f"no copy order for {sorted(set(tables) - done)}")
        ordered.extend(ready)
        done.update(ready)
    return CopyOrder(tables=ordered, deferred=sorted(deferred, key=lambda k: (k.table, k.name)))
