"""Following a forget request: a live bar on a terminal, one plain line per change when piped.

What each poll shows is `describe(request)`: the phase and its step count only once the worker has given a
total (a queued request shows "queued", never `0/None`), the finished status instead of the last phase, and
during unlearning the current evidence next to the target it must reach (each membership AUC → 0.5 ± the
tolerance; which verdict conditions still fail)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from unlearnd import Client, ForgetRequest

AUC_NAMES = (("loss_auc", "loss"), ("zlib_auc", "zlib"), ("min_k_auc", "Min-k"))


@dataclass(frozen=True)
class State:
    label: str  # the phase, or the request's status when there is no phase yet or it has finished
    completed: int | None  # steps done, None while unknown
    total: int | None
    info: str  # the evidence and its targets

    def line(self) -> str:
        count = f" {self.completed}/{self.total}" if self.total else ""
        return f"{self.label}{count}" + (f"  {self.info}" if self.info else "")


def describe(req: ForgetRequest) -> State:
    if req.finished:
        verdict = f" ({req.verdict})" if req.verdict else ""
        return State(f"{req.status}{verdict}", None, None, "")
    p = req.progress
    if req.status == "queued" or not p.phase:
        return State(req.status, None, None, "waiting for a worker")
    total = p.total or None
    return State(p.phase, p.step if total else None, total, _evidence(p.metrics, req.config))


def _evidence(metrics: dict, config: dict) -> str:
    """`forget MA 0.812  loss AUC 0.91 → 0.5±0.1 …  failing: ma, loss_test` from a check's metrics."""
    parts = []
    if isinstance(metrics.get("forget_ma"), int | float):
        parts.append(f"forget MA {metrics['forget_ma']:.3f}")
    tolerance = config.get("auc_tolerance", 0.1)
    aucs = [f"{label} {metrics[k]:.2f}" for k, label in AUC_NAMES if isinstance(metrics.get(k), int | float)]
    if aucs:
        parts.append(f"AUC {', '.join(aucs)} → target 0.5±{tolerance:g}")
    failed = metrics.get("failed")
    if isinstance(failed, list):
        parts.append(f"failing: {', '.join(failed)}" if failed else "every condition holds")
    return "  ".join(parts)


def follow(client: Client, request_id: str, console: Console, *, interval: float = 0.5) -> ForgetRequest:
    """Poll until the request ends, drawing a bar on a terminal and plain lines otherwise. Nothing is drawn
    before the first answer, so a request that does not exist prints only its error."""
    if not console.is_terminal:
        seen: list[tuple[str, str]] = []

        def print_changes(req: ForgetRequest) -> None:
            state = describe(req)
            if not seen or (state.label, state.info) != seen[-1]:  # a new phase or a new check, not every step
                console.print(state.line())
                seen.append((state.label, state.info))

        return client.wait(request_id, interval=interval, on_update=print_changes)

    bar = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task: list[int] = []

    def draw(req: ForgetRequest) -> None:
        s = describe(req)
        count = f"{s.completed}/{s.total}" if s.total else ""
        if not task:
            bar.start()
            task.append(bar.add_task(s.label, total=s.total, count=count, info=s.info))
        bar.update(task[0], description=s.label, completed=s.completed or 0, total=s.total, count=count, info=s.info)

    try:
        return client.wait(request_id, interval=interval, on_update=draw)
    finally:
        if task:
            bar.stop()
