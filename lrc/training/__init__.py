"""The training run: its configuration, the registered methods, the output directory and resume, the trainers, the demo."""
