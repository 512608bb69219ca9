"""How deeply a task's content is nested, measured without recursion. Pure.

Deep nesting breaks recursive code far from where it entered: Python's `json` and `copy.deepcopy` raise
RecursionError near 1,000 levels (deepcopy at about 500), which escaped the agent and left its pod busy for good,
and kopf decodes every watch event with `json.loads`, so one task nested past that broke the operator's watch of all
tasks. No sane Web UI request nests deeper than a dozen levels: admission refuses content past MAX_CONTENT_DEPTH
with `ContentTooDeep`, and this check is iterative, so it can measure any depth that reached us.
"""

from __future__ import annotations

from typing import Any

MAX_CONTENT_DEPTH = 64


def depth_exceeds(value: Any, limit: int = MAX_CONTENT_DEPTH) -> bool:
    """True when `value` has dicts/lists nested more than `limit` levels deep (a scalar is depth 0)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
