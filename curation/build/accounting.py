"""Exact accounting: per step and per source, input = output + sum of drops by reason."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


class StepCounts:
    def __init__(self) -> None:
        self.input: Counter[str] = Counter()
        self.output: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)
        # Samples a step adds (a mixture's repeats when upsampling): input + added = output + dropped.
        self.added: dict[str, Counter[str]] = defaultdict(Counter)

    def adding(self) -> set[str]:
        """Sources this step adds samples to (reading ``added`` creates empty entries: they do not count)."""
        return {s for s, reasons in self.added.items() if reasons}

    def to_dict(self) -> dict[str, Any]:
        sources = sorted(set(self.input) | set(self.output) | set(self.dropped) | self.adding())
        out: dict[str, Any] = {}
        for s in sources:
            out[s] = {
                "input": self.input[s],
                "output": self.output[s],
                "dropped": dict(sorted(self.dropped[s].items())),
            }
            if self.added[s]:
                out[s]["added"] = dict(sorted(self.added[s].items()))
        return out


class Accounting:
    """Counts for an ordered list of steps. Mergeable (partitions are counted separately)."""

    def __init__(self, step_names: list[str]) -> None:
        self.step_names = list(step_names)
        self.steps = {name: StepCounts() for name in step_names}

    def inp(self, step: str, source: str, n: int = 1) -> None:
        self.steps[step].input[source] += n

    def out(self, step: str, source: str, n: int = 1) -> None:
        self.steps[step].output[source] += n

    def drop(self, step: str, source: str, reason: str, n: int = 1) -> None:
        self.steps[step].dropped[source][reason] += n

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [{"step": name, "sources": self.steps[name].to_dict()} for name in self.step_names]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accounting:
        acc = cls([s["step"] for s in data["steps"]])
        for entry in data["steps"]:
            counts = acc.steps[entry["step"]]
            for source, c in entry["sources"].items():
                counts.input[source] += c["input"]
                counts.output[source] += c["output"]
                for reason, n in c["dropped"].items():
                    counts.dropped[source][reason] += n
                for reason, n in c.get("added", {}).items():
                    counts.added[source][reason] += n
        return acc

    def merge(self, other: Accounting) -> None:
        for name in other.step_names:
            if name not in self.steps:
                self.step_names.append(name)
                self.steps[name] = StepCounts()
            mine, theirs = self.steps[name], other.steps[name]
            mine.input.update(theirs.input)
            mine.output.update(theirs.output)
            for source, reasons in theirs.dropped.items():
                mine.dropped[source].update(reasons)
            for source, reasons in theirs.added.items():
                mine.added[source].update(reasons)

    def summary(self) -> dict[str, Any]:
        """Steps plus per-source totals: input (read), output (last step), dropped by reason."""
        first, last = self.step_names[0], self.step_names[-1]
        sources = sorted(set(self.steps[first].input))
        per_source = {}
        for s in sources:
            dropped: Counter[str] = Counter()
            added: Counter[str] = Counter()
            for name in self.step_names:
                dropped.update(self.steps[name].dropped[s])
                added.update(self.steps[name].added[s])
            per_source[s] = {
                "input": self.steps[first].input[s],
                "output": self.steps[last].output[s],
                "dropped": dict(sorted(dropped.items())),
            }
            if added:
                per_source[s]["added"] = dict(sorted(added.items()))
        return {**self.to_dict(), "sources": per_source}

    def check(self) -> list[str]:
        """Violations of the accounting identity (empty when exact)."""
        problems = []
        for name in self.step_names:
            c = self.steps[name]
            for s in set(c.input) | set(c.output) | set(c.dropped) | c.adding():
                d = sum(c.dropped[s].values())
                a = sum(c.added[s].values())
                if c.input[s] + a != c.output[s] + d:
                    problems.append(f"step {name}, source {s}: input {c.input[s]} + {a} != {c.output[s]} + {d}")
        for a, b in zip(self.step_names, self.step_names[1:], strict=False):
            for s in set(self.steps[a].output) | set(self.steps[b].input):
                if self.steps[a].output[s] != self.steps[b].input[s]:
                    problems.append(f"source {s}: {a} output {self.steps[a].output[s]} != {b} input")
        return problems
