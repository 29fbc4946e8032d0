"""The approver models: how the person who answers the gateway's approval prompts behaves.

Every model sees what the approval request shows (the exposed tool name and
the arguments as forwarded) and knows which calls the user's own task needs
(its reference plan, with exposed tool names):

- `oracle`: approves a call exactly when its tool and arguments are one of the
  task's own calls not approved yet (each once); refuses anything else. The
  ideal person, who checks every argument against what she asked for.
- `hurried`: approves any call of a tool the task itself uses, whatever the
  arguments. A busy person who checks the tool, not the arguments.
- `always`: approves everything. The person is no defence at all.
- `never`: refuses everything. Only what policy allows outright gets done.

An intent approval (the broker asking the user to confirm the task's declared
intent, docs/SECURITY-EVAL.md) is decided by the same model: every model but
`never` approves the planner's intent, which was declared from the user's own
request before anything untrusted was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

APPROVERS = ("oracle", "hurried", "always", "never")

Call = tuple[str, Any]
"""A call as an approval request shows it: (exposed tool name, arguments as JSON values)."""


@dataclass
class ApproverModel:
    """One run's approver: the model's name and the user task's own calls."""

    name: str
    own_calls: list[Call]
    _unapproved: list[Call] = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in APPROVERS:
            raise ValueError(f"unknown approver model {self.name!r}; one of {', '.join(APPROVERS)}")
        self._unapproved = list(self.own_calls)

    @property
    def own_tools(self) -> set[str]:
        return {tool for tool, _ in self.own_calls}

    def approves_call(self, tool: str, args: Any) -> bool:
        """The verdict on one held call (an `oracle` approval is used up)."""
        if self.name == "always":
            return True
        if self.name == "never":
            return False
        if self.name == "hurried":
            return tool in self.own_tools
        if (tool, args) in self._unapproved:
            self._unapproved.remove((tool, args))
            return True
        return False

    def approves_intent(self, grants: Sequence[dict[str, Any]]) -> bool:
        """The verdict on the task's declared intent, put to the user as one prompt."""
        if self.name == "never":
            return False
        if self.name == "oracle":
            # She asked for this task: the intent names its tools and nothing else.
            return all(g.get("tool") in self.own_tools for g in grants)
        return True
