"""``lrc train``'s own flags beside the run's: a recipe file and the demo (``lrc.training.demo``)."""

from __future__ import annotations

from lrc.cli.options import OptionError, options

DEMO_BASELINES = ("prune_kd", "only_kd")
"""The same-size students without LRC the demo can train beside the LRC student (``--demo_baseline``)."""


@options(group="this command")
class CommandOptions:
    """Recipes and the demo."""

    config: str | None = None
    """a YAML recipe: `flag: value` lines with the flags' own names (configs/recipes/); flags on the command line
    override it"""
    demo: bool = False
    """the out-of-the-box run (configs/recipes/demo.yaml; flags after it override its values)"""
    demo_baseline: str | None = None
    """--demo: also train a student of the same size WITHOUT LRC on the same tokens and report it beside the LRC
    student: prune_kd (the width-pruned teacher + CE + KL, Minitron-style) | only_kd (random init + CE + KL) |
    none"""
    demo_ood_eval: str | None = None
    """--demo: also report teacher and student perplexity on this held-out text from another domain (the demo's
    default: data/sample/ood_heldout.txt, Python documentation)"""
    onpolicy_steps: int = 0
    """--demo: a third act after the conversion: N on-policy distillation steps of the student from the same teacher
    (`lrc onpolicy`) on prompts cut from the held-out text, reported beside the teacher and the LRC student (the
    demo's recipe: 20, about 3 minutes on 2 CPU cores; 0: off)"""

    def validate(self) -> None:
        if self.demo_baseline not in (None, "", "none", *DEMO_BASELINES):
            raise OptionError(f"--demo_baseline must be {', '.join(DEMO_BASELINES)} or none, got {self.demo_baseline!r}")
        if self.onpolicy_steps < 0:
            raise OptionError(f"--onpolicy_steps must be 0 (off) or more, got {self.onpolicy_steps}")
