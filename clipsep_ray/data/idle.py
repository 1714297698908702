"""A pause for Ray Data's scheduling loop while nothing moves.

Ray 2.60's streaming executor waits for its tasks with ``ray.wait(timeout=0.1)``, but that
returns at once when the tasks have finished and their outputs are held back (the output
split is full and the training workers have not taken from it yet), and there is no wait at
all when no task runs. The loop then spins: in the demo's training the SplitCoordinator
actor burnt 60-87% of a core that way (py-spy: the loop's resource bookkeeping, ``ray.wait``
almost never), beside two training workers on a 2-core box, and the first 350 steps ran at
0.42 s each against 0.25 s later.

:class:`IdleWait` runs after each step of that loop. If the step changed nothing it can see
(tasks submitted or finished, outputs made or taken, blocks queued), it sleeps a few
milliseconds, so a held-back pipeline costs next to nothing; a step that moved anything is
followed by the next at once.
"""
from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

#: Seconds of one pause: short beside a training step (~250 ms here) and a block's preparation.
PAUSE_S = 0.01


class IdleWait(ExecutionCallback):
    """Sleep :data:`PAUSE_S` after a scheduling step that changed none of :func:`progress`."""

    def __init__(self) -> None:
        self._last: tuple | None = None

    def on_execution_step(self, executor) -> None:
        now = progress(getattr(executor, "_topology", None) or {})
        if now == self._last:
            time.sleep(PAUSE_S)
        self._last = now


def progress(topology) -> tuple:
    """What a step of the loop can change, per operator: inputs received, tasks submitted and
    finished, outputs made and taken, and blocks in its output queue."""
    out = []
    for op, state in topology.items():
        m = op.metrics
        out.append((m.num_inputs_received, m.num_tasks_submitted, m.num_tasks_finished,
                    m.num_task_outputs_generated, m.num_outputs_taken, state.output_queue.num_blocks))
    return tuple(out)


def install(context) -> None:
    """Add :class:`IdleWait` to ``context`` (a dataset's ``DataContext``) once."""
    if IdleWait not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes = [*context.custom_execution_callback_classes, IdleWait]
