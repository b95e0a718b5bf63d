import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# file hashes and data checks are cached by file identity (lrc.file_cache): keep the tests' out of ~/.cache
os.environ.setdefault("LRC_CACHE_DIR", tempfile.mkdtemp(prefix="lrc-test-cache-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
