"""The command line: typed option dataclasses parsed by HfArgumentParser (options), and the commands that are only a command line (convert)."""
