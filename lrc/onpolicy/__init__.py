"""On-policy distillation after LRC (``lrc onpolicy``): the converted student samples, the teacher scores every token,
the student minimises a per-token divergence on its own samples (GKD), with TRL's ``DistillationTrainer``.

- ``options``: the flags (``OnPolicyOptions``);
- ``prompts``: the prompts file, checked line by line;
- ``trainer``: ``OnPolicyTrainer`` (TRL's trainer + GKD's on/off-policy mix, k completions per prompt, the run
  contract);
- ``record``: the run's record and the strict resume rules;
- ``measure``: what the demo and the study report (the teacher's reverse KL on the student's samples, the teacher's
  log-probability of them);
- ``run``: ``lrc onpolicy`` (parse, check, build, train).
"""
