"""Fold an LRC checkpoint into a standard Hugging Face model directory.

    lrc convert --ckpt-path runs/demo --save-path runs/demo/student

CKPT may be a training output directory, a ``checkpoint-N`` directory or the weights file. Our
checkpoints describe themselves (LRC config + teacher path + teacher config hash), so no other flag
is needed; flags given anyway must agree with the stored config. Official-code checkpoints
(``model.zoom.weight`` ...) need ``--raw-model-name``; their variant is read from the tensors.

``--export_arch llama`` writes a Qwen2-family student as an equivalent Llama checkpoint (for serving
engines that mishandle Qwen2's explicit head_dim); given an already converted Qwen2 student directory
as ``--ckpt-path`` it only re-exports. A standard HF checkpoint without ``--export_arch`` is refused:
it needs no conversion.
"""

from __future__ import annotations

import json
import logging
import sys

from lrc.after.convert import CONVERSION_RECORD, convert_checkpoint
from lrc.cli.options import from_keywords, options, run_command


@options(group="what to convert, where")
class ConvertOptions:
    """``lrc convert``'s flags."""

    ckpt_path: str | None = None
    """required: the weights file, a checkpoint-N directory or a training output directory"""
    save_path: str | None = None
    """required: the output directory of the standard HF student (written atomically)"""
    raw_model_name: str | None = None
    """the teacher directory / .gguf file; overrides the stored teacher path (needed for official checkpoints)"""
    dtype: str | None = None
    """output dtype: float32 | bfloat16 | float16 (default: the teacher's)"""
    overwrite: bool = False
    """replace --save_path when it holds an earlier conversion's output (never anything else)"""
    export_arch: str | None = None
    """llama: write a Qwen2-family student as an equivalent Llama checkpoint"""
    tokenizer: str | None = None
    """the student's tokenizer (default: the teacher's; a teacher without one gives a student without one, with a
    warning)"""


@options(group="checks against the stored config (official checkpoints: their variant)")
class StoredConfigChecks:
    """Optional: each must agree with the checkpoint's stored LRC config; official checkpoints are read with these
    (their variant is otherwise inferred from the tensors)."""

    target_hidden_size: int | None = None
    """the student width d_s (official checkpoints: inferred)"""
    use_all_attn: bool | None = None
    """separate q/k/v projections (official checkpoints: inferred from the tensors)"""
    use_in_out_mlp: bool | None = None
    """shared gate/up projection (official checkpoints: inferred from the tensors)"""
    tie_word_emb_proj: bool | None = None
    """one projection for embedding and head (official checkpoints: inferred from the tensors)"""
    target_rms_norm_eps: float | None = None
    """for official checkpoints: the epsilon they were trained with"""
    del_layers: str | None = None
    """for official checkpoints: the dropped teacher layers, comma-separated"""


@options(group="official training flags, irrelevant to conversion (ignored with a warning)")
class IgnoredOfficialFlags:
    """Flags the official conversion command passes along that change nothing here."""

    tie_n: str | None = None
    """ignored"""
    use_aux_loss: str | None = None
    """ignored"""
    use_std_like_attn: str | None = None
    """ignored"""
    check_data_cls_loss: str | None = None
    """ignored"""
    gpus: str | None = None
    """ignored"""


OPTION_GROUPS = (ConvertOptions, StoredConfigChecks, IgnoredOfficialFlags)


def convert(opts: ConvertOptions, checks: StoredConfigChecks | None = None,
            ignored: IgnoredOfficialFlags | None = None) -> None:
    """Convert ``opts.ckpt_path`` into ``opts.save_path`` and say where it went."""
    for k, v in vars(ignored or IgnoredOfficialFlags()).items():
        if v is not None:
            logging.warning("--%s is irrelevant to conversion and is ignored", k.replace("_", "-"))
    flags = vars(checks or StoredConfigChecks())
    out = convert_checkpoint(opts.ckpt_path, opts.save_path, raw_model_name=opts.raw_model_name, flags=flags,
                             dtype=opts.dtype, overwrite=opts.overwrite, export_arch=opts.export_arch,
                             tokenizer=opts.tokenizer)
    meta = json.loads((out / CONVERSION_RECORD).read_text())
    step = meta.get("step")
    where = meta.get("source_weights") or meta.get("source_checkpoint")
    print(f"converted student written to {out} (step {step if step is not None else 'unknown'} of {where}"
          f"{'' if meta.get('verified', True) else ', not verified: no manifest'})\n"
          f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r})")


def main(ckpt_path: str, save_path: str, **flags) -> None:
    """``convert`` for keyword arguments (the official script's ``main``)."""
    convert(*from_keywords(OPTION_GROUPS, {"ckpt_path": ckpt_path, "save_path": save_path, **flags},
                            prog="lrc convert"))


def cli(argv: list[str] | None = None) -> int:
    """``lrc convert`` (flags: ``--help``; ``argv`` default: sys.argv[1:]); the exit code of ``lrc.errors.run_cli``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_command(OPTION_GROUPS, argv, convert, prog="lrc convert", description=__doc__,
                       required=("ckpt_path", "save_path"))


if __name__ == "__main__":
    sys.exit(cli())
