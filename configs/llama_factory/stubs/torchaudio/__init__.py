"""Stub ``torchaudio`` for LlamaFactory text-only SFT on CPU (see scripts/setup_llamafactory.sh).

``llamafactory/data/mm_plugin.py`` imports torchaudio at module level, but PyPI's torchaudio wheels link
CUDA libraries and fail to import on a CPU-only torch. Text SFT never calls torchaudio; any audio use
fails loudly here instead of importing a broken build.
"""

__version__ = "0.0.0+lrc-stub"


def __getattr__(name: str):
    raise ImportError(
        f"torchaudio.{name}: this is the LRC stub torchaudio (configs/llama_factory/stubs) for text-only SFT "
        "on CPU; install a torchaudio build matching your torch for audio datasets"
    )
