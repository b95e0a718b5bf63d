import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# file hashes and data checks are cached by file identity (lrc.file_cache): keep the tests' out of ~/.cache
os.environ.setdefault("LRC_CACHE_DIR", tempfile.mkdtemp(prefix="lrc-test-cache-"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker (and per subprocess) on 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
