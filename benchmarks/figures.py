"""The suite's sizes, time budgets and figures: each figure's label, unit and target.

:data:`SPECS` lists every figure in the order of the table, with the issue's targets; a
benchmark fills in the values through a :class:`Report`, which keeps what was measured even
if the benchmark runs out of time later.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; the issue's sizes are the ``full`` preset."""

    send_tasks: int
    collect_tasks: int
    e2e_tasks: int
    efficiency_tasks: int
    efficiency_task_ms: int
    efficiency_agents: int
    session_tasks: int
    #: Repetitions of each timed measurement; the figure is their median.
    repeats: int
    startup_repeats: int
    latency_ms: float = 20.0


PRESETS: dict[str, Sizes] = {
    "full": Sizes(
        send_tasks=1000,
        collect_tasks=1000,
        e2e_tasks=1000,
        efficiency_tasks=64,
        efficiency_task_ms=1000,
        efficiency_agents=8,
        session_tasks=10_000,
        repeats=3,
        startup_repeats=3,
    ),
    "quick": Sizes(
        send_tasks=50,
        collect_tasks=50,
        e2e_tasks=100,
        efficiency_tasks=16,
        efficiency_task_ms=250,
        efficiency_agents=8,
        session_tasks=200,
        repeats=2,
        startup_repeats=1,
    ),
    # For the smoke test: every code path, as little work as possible.
    "smoke": Sizes(
        send_tasks=5,
        collect_tasks=5,
        e2e_tasks=5,
        efficiency_tasks=2,
        efficiency_task_ms=50,
        efficiency_agents=2,
        session_tasks=5,
        repeats=1,
        startup_repeats=1,
    ),
}

#: Seconds each benchmark may take, per preset, before it is reported as timed out. The full
#: budgets leave room for a grid several times slower than the targets, not for a hung one.
BUDGETS: dict[str, dict[str, float]] = {
    "full": {
        "startup": 120,
        "send": 600,
        "collect": 600,
        "e2e": 600,
        "efficiency": 240,
        "session": 480,
    },
    "quick": {
        "startup": 30,
        "send": 60,
        "collect": 60,
        "e2e": 60,
        "efficiency": 45,
        "session": 60,
    },
    "smoke": {
        "startup": 60,
        "send": 60,
        "collect": 60,
        "e2e": 90,
        "efficiency": 60,
        "session": 60,
    },
}


@dataclass(frozen=True)
class Target:
    """A figure's target from the issue, e.g. ``>= 10`` (x faster)."""

    op: str
    bound: float
    unit: str = ""

    def met(self, value: float) -> bool:
        ops = {
            ">=": value >= self.bound,
            "<=": value <= self.bound,
            "<": value < self.bound,
            ">": value > self.bound,
        }
        return ops[self.op]

    def __str__(self) -> str:
        separator = "" if self.unit == "x" else " "
        return f"{self.op} {self.bound:g}{separator}{self.unit}".strip()


@dataclass(frozen=True)
class Spec:
    """A figure the suite reports: which benchmark makes it, its label, unit and target."""

    key: str
    benchmark: str
    #: Formatted with the run's :class:`Sizes`, e.g. ``"send {send_tasks} tasks, loopback"``.
    label: str
    unit: str
    target: Target | None = None


#: Every figure, in the order of the table. Targets are the issue's.
SPECS: tuple[Spec, ...] = (
    Spec(
        "startup", "startup", "start-up to the first accepted /submit", "s", Target("<=", 3, "s")
    ),
    Spec("send.loopback", "send", "send {send_tasks} tasks, loopback", "x", Target(">=", 1, "x")),
    Spec(
        "send.latency",
        "send",
        "send {send_tasks} tasks, +{latency_ms:g} ms",
        "x",
        Target(">=", 10, "x"),
    ),
    Spec(
        "collect.loopback",
        "collect",
        "collect {collect_tasks} results, loopback",
        "x",
        Target(">=", 1, "x"),
    ),
    Spec(
        "collect.latency",
        "collect",
        "collect {collect_tasks} results, +{latency_ms:g} ms",
        "x",
        Target(">=", 10, "x"),
    ),
    Spec(
        "e2e.grid",
        "e2e",
        "end to end, {e2e_tasks} zero-work tasks, embedded grid",
        "tasks/s",
        Target(">=", 100, "tasks/s"),
    ),
    Spec("e2e.process_pool", "e2e", "  same calls, ProcessPoolExecutor (context)", "tasks/s"),
    Spec("e2e.dask", "e2e", "  same calls, dask LocalCluster (context)", "tasks/s"),
    Spec(
        "efficiency",
        "efficiency",
        "{efficiency_tasks} tasks of {efficiency_task_ms} ms on {efficiency_agents} agents: "
        "wall / ideal",
        "x",
        Target("<=", 1.15, "x"),
    ),
    Spec(
        "session.seconds",
        "session",
        "{session_tasks}-task session, end to end",
        "s",
        Target("<", 180, "s"),
    ),
    Spec(
        "session.rss",
        "session",
        "{session_tasks}-task session, client peak RSS",
        "MB",
        Target("<", 300, "MB"),
    ),
)
SPECS_BY_KEY = {spec.key: spec for spec in SPECS}
#: The benchmarks, in the order they run (cheapest and quietest first).
BENCHMARKS: tuple[str, ...] = tuple(dict.fromkeys(spec.benchmark for spec in SPECS))


def label_of(spec: Spec, sizes: Sizes) -> str:
    return spec.label.format(**asdict(sizes))


@dataclass
class Figure:
    """One number of the report, with its unit, target and how it was obtained."""

    key: str
    label: str
    value: float | None
    unit: str
    target: Target | None = None
    #: How the value was obtained, for the table (e.g. the two medians behind a ratio).
    detail: str = ""
    #: The raw measurements, for the JSON file.
    data: dict[str, Any] = field(default_factory=dict)
    #: Why there is no value (e.g. "timed out after 600 s").
    missing: str = ""

    @property
    def status(self) -> str:
        if self.target is None:
            return "info"
        if self.value is None:
            return "MISS"
        return "PASS" if self.target.met(self.value) else "MISS"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = str(self.target) if self.target else None
        data["status"] = self.status
        return data


class Report:
    """Figures and notes of one benchmark, filled in as it runs."""

    def __init__(self, name: str, sizes: Sizes) -> None:
        self.name = name
        self.sizes = sizes
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self._started = time.monotonic()

    def add(
        self,
        key: str,
        value: float | None,
        *,
        detail: str = "",
        missing: str = "",
        **data: Any,
    ) -> Figure:
        """Record the figure ``key`` of :data:`SPECS`; ``data`` goes to the JSON file."""
        spec = SPECS_BY_KEY[key]
        figure = Figure(
            key=key,
            label=label_of(spec, self.sizes),
            value=value,
            unit=spec.unit,
            target=spec.target,
            detail=detail,
            data=data,
            missing=missing,
        )
        self.figures.append(figure)
        how = f"  ({detail})" if value is not None and detail else ""
        self.progress(f"{figure.label.strip()}: {format_value(figure)}{how}")
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.progress(f"note: {text}")

    def progress(self, text: str) -> None:
        """A progress line on stderr, so that a long run shows it is alive."""
        elapsed = time.monotonic() - self._started
        print(f"  [{self.name} {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)


def format_number(value: float | None, unit: str) -> str:
    """A figure's value as the table shows it, e.g. ``12.30x``, ``104.2 tasks/s``."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "tasks/s":
        return f"{value:.1f} tasks/s"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.2f} {unit}"


def format_value(figure: Figure) -> str:
    if figure.value is None:
        return figure.missing or "no value"
    return format_number(figure.value, figure.unit)
