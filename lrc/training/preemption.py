"""Stop cleanly on SIGTERM / SIGINT: finish the optimizer step, save a checkpoint, exit with code 75.

Slurm sends SIGTERM on preemption and at the time limit (``#SBATCH --signal=TERM@300`` sends it 5
minutes earlier); Ctrl-C sends SIGINT. ``GracefulStop`` turns the first signal into a request;
``StopOnSignal`` (a ``TrainerCallback``) sees it at the end of the optimizer step in progress and has
the Trainer save a checkpoint and stop; the caller then raises ``Preempted``. A second signal aborts
at once (SIGINT: ``KeyboardInterrupt``; SIGTERM: the default action). Launchers forward the first
signal to the workers that got it already (torchrun does), so a repeat within ``REPEAT_GRACE_S`` of
the first counts as the same signal.

With several processes every rank must save the same step, yet a signal reaches the ranks at
different moments, or only some of them. So the ranks agree: at each optimizer step an asynchronous
all-reduce (MAX) of the local request starts on a gloo (CPU) group, and its result is read one step
later. Every rank reads the same result at the same step and stops after the same step. It costs no
device sync (the flag lives on the CPU) and one step of delay.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from transformers import TrainerCallback

from lrc.errors import EXIT_PREEMPTED, LRCError

REPEAT_GRACE_S = 2.0


class Preempted(LRCError):
    """A signal stopped training after a checkpoint was written; resume it."""

    exit_code = EXIT_PREEMPTED


class GracefulStop:
    """Context manager: the first SIGTERM/SIGINT sets ``received``; a second one aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._at = 0.0
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._at < REPEAT_GRACE_S:
                return  # the same signal, forwarded by a launcher
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)  # the default action: terminate now
            return
        self.received, self._at = name, time.monotonic()
        os.write(2, f"\n{name} received: finishing this optimizer step, then saving a checkpoint and stopping "
                    f"(send it again to abort at once)\n".encode())

    def _restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def __enter__(self) -> GracefulStop:
        for s in self.SIGNALS:
            self._old[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


class StopOnSignal(TrainerCallback):
    """Save and stop after the optimizer step in which a signal arrived (agreed across ranks)."""

    def __init__(self, stop: GracefulStop) -> None:
        self.stop = stop
        self.stopped_at: int | None = None
        self._group = None
        self._pending = None  # (work, flag tensor) of the all-reduce started at the previous step

    def on_train_begin(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")  # every rank calls it here, together

    def _agreed(self) -> bool:
        if self._group is None:
            return self.stop.requested
        import torch.distributed as dist

        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item())
        flag = torch.tensor([int(self.stop.requested)], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return stop

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed() and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
