"""Spider's SQL hardness (easy / medium / hard / extra) computed from a `sqlglot` parse.

Spider's `evaluation.py` (`Evaluator.eval_hardness`) counts three things on the *outermost*
query of its own parse:

- component1: WHERE, GROUP BY, ORDER BY, LIMIT present (1 each), joins (table units in FROM - 1),
  OR connectives and LIKE conditions in the join/WHERE/HAVING conditions;
- component2: nested queries: sub-queries used as a condition's value, plus a set operation
  (UNION / INTERSECT / EXCEPT) counted once;
- others: more than one "aggregate" (select items and ORDER BY / GROUP BY units with an
  aggregate, WHERE conditions with NOT, and HAVING's connectives and NOT conditions: Spider's
  `count_agg` inspects the first field of these units), more than one select column, more than
  one WHERE condition, more than one GROUP BY column: each adds 1;

then: easy if c1 <= 1, others == 0, c2 == 0; medium if (others <= 2, c1 <= 1, c2 == 0) or
(c1 <= 2, others < 2, c2 == 0); hard if (others > 2, c1 <= 2, c2 == 0) or (2 < c1 <= 3,
others <= 2, c2 == 0) or (c1 <= 1, others == 0, c2 <= 1); extra otherwise. The quirks of
`count_agg` are reproduced on purpose so labels agree with Spider's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import sqlglot
from sqlglot import exp

LEVELS = ("easy", "medium", "hard", "extra")


@dataclass(frozen=True)
class Components:
    component1: int
    component2: int
    others: int
    joins: int
    nested: int
    aggregations: int
    set_operation: bool

    @property
    def hardness(self) -> str:
        c1, c2, o = self.component1, self.component2, self.others
        if c1 <= 1 and o == 0 and c2 == 0:
            return "easy"
        if (o <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and o < 2 and c2 == 0):
            return "medium"
        if (o > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and o <= 2 and c2 == 0) or (c1 <= 1 and o == 0 and c2 <= 1):
            return "hard"
        return "extra"


def _outer_select(tree: exp.Expression) -> tuple[exp.Select | None, bool]:
    set_op = False
    while isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        set_op = True
        tree = tree.left
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    return (tree if isinstance(tree, exp.Select) else None), set_op


def _conditions(node: exp.Expression | None) -> Iterator[exp.Expression]:
    """Leaf conditions of an AND/OR tree (parentheses unwrapped), without entering sub-queries."""
    if node is None:
        return
    if isinstance(node, exp.Paren):
        yield from _conditions(node.this)
    elif isinstance(node, exp.Connector):
        yield from _conditions(node.left)
        yield from _conditions(node.right)
    else:
        yield node


def _connectives(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.Paren):
        return _connectives(node.this)
    if isinstance(node, exp.Connector):
        return [node, *_connectives(node.left), *_connectives(node.right)]
    return []


def _is_like(cond: exp.Expression) -> bool:
    inner = cond.this if isinstance(cond, exp.Not) else cond
    return isinstance(inner, (exp.Like, exp.ILike))


def _subqueries(cond: exp.Expression) -> int:
    """Sub-queries used directly as values of a condition (not those nested deeper)."""
    n = 0
    for node in cond.walk():
        if node is cond:
            continue
        if isinstance(node, (exp.Select, exp.Union, exp.Intersect, exp.Except)):
            parent = node.parent
            # count only the outermost query under this condition
            inside_other = False
            while parent is not None and parent is not cond:
                if isinstance(parent, (exp.Select, exp.Union, exp.Intersect, exp.Except)):
                    inside_other = True
                    break
                parent = parent.parent
            if not inside_other:
                n += 1
    return n


def _agg_top(node: exp.Expression) -> bool:
    node = node.this if isinstance(node, exp.Alias) else node
    return isinstance(node, exp.AggFunc)


def _order_aggs(node: exp.Expression) -> int:
    """Spider's val_unit: (op, col_unit1, col_unit2); each col_unit may carry an aggregate."""
    node = node.this if isinstance(node, exp.Ordered) else node
    if isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Binary) and not isinstance(node, exp.Connector):
        return int(isinstance(node.left, exp.AggFunc)) + int(isinstance(node.right, exp.AggFunc))
    return int(isinstance(node, exp.AggFunc))


def components(sql: str) -> Components:
    """Spider's counts for `sql` (SQLite dialect). Raises `sqlglot.errors.ParseError` on bad SQL."""
    tree = sqlglot.parse_one(sql, read="sqlite")
    select, set_op = _outer_select(tree)
    if select is None:
        raise ValueError(f"not a SELECT query: {sql[:80]!r}")
    where = select.args.get("where")
    where_node = where.this if where is not None else None
    having = select.args.get("having")
    having_node = having.this if having is not None else None
    group = select.args.get("group")
    group_units = list(group.expressions) if group is not None else []
    order = select.args.get("order")
    order_units = list(order.expressions) if order is not None else []
    joins = list(select.args.get("joins") or [])
    join_conds = [j.args.get("on") for j in joins if j.args.get("on") is not None]

    where_conds = list(_conditions(where_node))
    having_conds = list(_conditions(having_node))
    all_conds = [c for jc in join_conds for c in _conditions(jc)] + where_conds + having_conds

    c1 = sum(x is not None for x in (where, group, order, select.args.get("limit")))
    n_tables = (1 if (select.args.get("from_") or select.args.get("from")) is not None else 0) + len(joins)
    c1 += max(n_tables - 1, 0)
    ors = [c for node in [*join_conds, where_node, having_node] for c in _connectives(node) if isinstance(c, exp.Or)]
    c1 += len(ors)
    c1 += sum(_is_like(c) for c in all_conds)

    nested = sum(_subqueries(c) for c in all_conds)
    c2 = nested + int(set_op)

    aggs = sum(_agg_top(e) for e in select.expressions)
    aggs += sum(isinstance(c, exp.Not) for c in where_conds)  # Spider's count_agg reads not_op here
    aggs += sum(isinstance(g, exp.AggFunc) for g in group_units)
    aggs += sum(_order_aggs(o) for o in order_units)
    aggs += len(_connectives(having_node)) + sum(isinstance(c, exp.Not) for c in having_conds)
    others = int(aggs > 1) + int(len(select.expressions) > 1) + int(len(where_conds) > 1) + int(len(group_units) > 1)
    return Components(c1, c2, others, max(n_tables - 1, 0), nested, aggs, set_op)


def spider_hardness(sql: str) -> str | None:
    """easy / medium / hard / extra, or None when the SQL does not parse as a query."""
    try:
        return components(sql).hardness
    except (sqlglot.errors.SqlglotError, ValueError):
        return None
