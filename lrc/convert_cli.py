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

import logging
import sys

import fire

from .errors import run_cli
from .convert import ConversionError, convert_checkpoint

_IGNORED_OFFICIAL = ("tie_n", "use_aux_loss", "use_std_like_attn", "check_data_cls_loss", "gpus")


def main(
    ckpt_path: str,
    save_path: str,
    raw_model_name: str | None = None,
    target_hidden_size: int | None = None,
    use_all_attn: bool | None = None,
    use_in_out_mlp: bool | None = None,
    tie_word_emb_proj: bool | None = None,
    target_rms_norm_eps: float | None = None,
    del_layers: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    export_arch: str | None = None,
    tokenizer: str | None = None,
    **official_unused,
) -> None:
    """Convert an LRC checkpoint.

    Args:
        ckpt_path: weights file, checkpoint-N directory or training output directory.
        save_path: output directory for the standard HF student (written atomically).
        raw_model_name: teacher directory / .gguf file; overrides the stored teacher path.
        target_hidden_size: optional check against the stored config (official: inferred).
        use_all_attn: optional check (official checkpoints: inferred from the tensors).
        use_in_out_mlp: optional check (official checkpoints: inferred from the tensors).
        tie_word_emb_proj: optional check (official checkpoints: inferred from the tensors).
        target_rms_norm_eps: optional check; for official checkpoints the eps they were trained with.
        del_layers: optional check; for official checkpoints the dropped teacher layers.
        dtype: output dtype (float32 | bfloat16 | float16); default: the teacher's.
        overwrite: replace a non-empty --save-path.
        export_arch: "llama": write a Qwen2-family student as an equivalent Llama checkpoint.
        tokenizer: the student's tokenizer (default: the teacher's; a teacher without one gives a
            student without one, with a warning).
    """
    for k in official_unused:
        if k.replace("-", "_") not in _IGNORED_OFFICIAL:
            raise ConversionError(f"unknown flag --{k.replace('_', '-')}")
        logging.warning("--%s is irrelevant to conversion and is ignored", k.replace("_", "-"))
    flags = dict(target_hidden_size=target_hidden_size, use_all_attn=use_all_attn, use_in_out_mlp=use_in_out_mlp,
                 tie_word_emb_proj=tie_word_emb_proj, target_rms_norm_eps=target_rms_norm_eps, del_layers=del_layers)
    out = convert_checkpoint(ckpt_path, save_path, raw_model_name=raw_model_name, flags=flags, dtype=dtype,
                             overwrite=overwrite, export_arch=export_arch, tokenizer=tokenizer)
    print(f"converted student written to {out}\n"
          f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cli(argv: list[str] | None = None) -> int:
    """``lrc convert`` (fire flags; ``argv`` default: sys.argv[1:]); the exit code of ``lrc.errors.run_cli``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:  # fire's help, not its "missing CKPT_PATH" usage error (exit 2)
        argv = ["--", "--help"]
    return run_cli(lambda: fire.Fire(main, command=argv, name="convert"))
