"""Training data: the readers (datasets), the packed-jsonl check, the token-shard format and its preparation (prepare/)."""
