"""The run contract around ``Trainer.train``, the same for every kind of run (``lrc train``, ``lrc onpolicy``).

``drive_run``, in order:

1. signals: the first SIGTERM/SIGINT becomes a request to stop after the step in progress (``GracefulStop``);
2. the output directory claimed on the main process (``claim``: lock, resume plan, record), its decision handed to
   every rank (``decided_on_main``); a finished run trains nothing, a run whose final files were not all written
   gets them from its last checkpoint;
3. ``build``: the models, data and trainer; a failure or a signal before training begins leaves ``--output_dir`` as
   the start found it (``RunStart.undone_on_failure``);
4. ``Trainer.train`` with every ``torch.load`` weights-only (``weights_only_loads``): a checkpoint file that would run
   code is refused in one line;
5. after a signal: ``Preempted`` (exit 75) naming the checkpoint written; otherwise the final outputs at the root,
   taken from the last step's checkpoint (written now if a callback stopped training between ``--save_steps``),
   with their manifest written last.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrc.console import say


def close_progress_bars(trainer) -> None:
    """End the progress bar's line (before an error message is printed under it)."""
    for cb in trainer.callback_handler.callbacks:
        bar = getattr(cb, "training_bar", None)
        if bar is not None:
            bar.close()
            cb.training_bar = None


def refused_pickle(checkpoint: str | None, e: BaseException):
    """The one-line error for a checkpoint file the weights-only unpickler refused."""
    from lrc.checkpoint import CheckpointError
    from lrc.training.run_dir import unpickler_refusal

    return CheckpointError(f"{checkpoint}: a file in it holds more than tensors and plain data, so it was not loaded "
                           f"(torch's weights-only unpickler: {unpickler_refusal(e)}); nothing in a checkpoint is ever "
                           f"unpickled with code")


def drive_run(out: Path, main: bool, max_steps: int, claim: Callable[[contextlib.ExitStack, Any], tuple[Any, Any]],
              build: Callable[[Any, Any, Any, Any], tuple[Any, Any]]):
    """Run one training in ``out`` under the contract of the module docstring. Returns the trainer, or None when
    there was nothing to train.

    ``claim(stack, start) -> (plan, extra)``: main process only (``lrc.training.start.claim_run_dir``); ``extra`` is
    handed to ``build``. ``build(plan, extra, start, stop) -> (trainer, stopper)``: every process; ``stopper`` is the
    trainer's ``StopOnSignal`` callback."""
    from lrc.errors import InterruptedRun
    from lrc.training.preemption import GracefulStop, Preempted
    from lrc.training.run_dir import decided_on_main, weights_only_loads, write_final_outputs
    from lrc.training.start import RunStart

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(GracefulStop())
        start = RunStart(out)
        plan, extra = decided_on_main(lambda: claim(stack, start), main)
        for m in plan.messages():
            say(m)
        if plan.finished_at is not None:
            say(f"{out} holds a run finished at step {plan.finished_at} (--max_steps {max_steps}): nothing to train; "
                f"its final outputs are at its root")
            return None
        if plan.finalize_from is not None:
            if main:
                write_final_outputs(out, plan.finalize_from)
            say(f"{plan.finalize_from} is at --max_steps {max_steps}: training had finished; its final outputs are "
                f"now written to {out}")
            return None
        with start.undone_on_failure(main):  # until training begins, a failure leaves --output_dir as it was
            trainer, stopper = build(plan, extra, start, stop)
            if stop.requested:
                raise InterruptedRun(f"stopped by {stop.received} before training began; nothing was saved")
            start.training = True
        try:
            with weights_only_loads():
                trainer.train(resume_from_checkpoint=plan.checkpoint)
        except pickle.UnpicklingError as e:
            raise refused_pickle(plan.checkpoint, e) from e
        finally:
            close_progress_bars(trainer)
        if stopper.stopped_at is not None:
            e = Preempted(f"stopped by {stop.received} after step {stopper.stopped_at}; "
                          f"{out / f'checkpoint-{stopper.stopped_at}'} is written. Resume: the same command with "
                          f"--resume auto")
            e.quiet = not main
            raise e
        trainer.save_final_checkpoint()  # a callback may have stopped training between --save_steps
        if main:
            write_final_outputs(out, out / f"checkpoint-{trainer.state.global_step}", trainer.state.save_to_json)
        trainer.accelerator.wait_for_everyone()
    return trainer
