"""Data preparation: raw text sources -> shuffled, fixed-length token shards (+ optional official packed jsonl).

Pipeline (``prepare(...)`` / ``run_prepare(PrepareConfig(...))``, CLI ``lrc prepare``), one module per step:

1. **Plan** (main process; ``plan.make_plan`` -> ``Plan``, ``sources.resolve_sources`` -> ``Source`` list,
   ``tokenizer.TokenizerSpec``): resolve the *sources* - every comma-separated ``--inputs`` entry (paths / globs)
   and every entry of ``--sources FILE`` (JSON / YAML list of ``{path, name, format, text_field, filter,
   budget_tokens, budget_sample, weight, chat}``) - into an ordered file list ``[(source, file, format), ...]``;
   check every file exists and has a known format (``.parquet``, ``.jsonl[.gz|.xz]`` / ``.json``,
   ``.txt[.gz|.xz]``, a ``datasets`` ``save_to_disk`` directory, or the source's ``format``); load the tokenizer
   once to fail early (and check it has a chat template when a source needs one); write ``plan.json`` into the
   work directory ``<output>.tmp-<pid>`` (``<output>.tmp-slurm`` on Slurm; its layout: ``workdir``).
2. **Tokenize** (``pipeline``: a datatrove executor, ``W`` tasks of the ``steps``). Task ``r`` of ``W`` takes the
   *contiguous* slice ``files[r*n//W:(r+1)*n//W]`` and runs two pipeline steps: ``SourceReader`` (a datatrove
   ``BaseReader``: parquet via pyarrow reading only the columns it needs, strict jsonl, blank-line-separated text,
   ``load_from_disk``; renders conversations with the teacher's chat template; applies the source's filter; stops
   with file and line on bad input where datatrove's readers would skip it with a log warning) ->
   ``TokenFileWriter`` (fast batch encode with ``tokenizers``, frames every document, appends the ids to
   ``tasks/task{r:05d}.src{j:03d}.bin`` and the document lengths to ``.len``; stops a source once this task holds
   ``budget_tokens`` of it).
3. **Merge** (``finalize.finalize`` with ``merge.merge_tasks``, once, after all tasks): per source in order,
   concatenate its task files in task order and keep the first ``budget_tokens`` tokens (the *distinct* tokens);
   with weights, resample documents (below); concatenate the sources; cut into ``N = T // S`` sequences of exactly
   ``S = data_max_len`` tokens (the tail is dropped); shuffle the sequence order with
   ``np.random.default_rng(seed).permutation(N)``; write ``shard_00000.bin``... and ``manifest.json`` (the format:
   ``lrc.data.token_shards``); optionally ``train.jsonl`` in the official ``{"input_ids": [...]}`` format, same order
   as the shards. Then rename the work directory to ``output``.

**Per-source options** (defaults: the global ``--text-field`` / ``--filter`` / ``--budget``):

- ``filter``: ``FIELD OP LITERAL`` joined by ``and`` (OP one of ``>= <= == != > <``; LITERAL a number,
  ``true``/``false``, a quoted or bare string), e.g. ``int_score >= 4 and language == en``; parsed, never
  ``eval``-ed. FIELD is a top-level column / JSON key or a key of the ``metadata`` dict (``a.b`` walks nested
  dicts). A document whose field is missing or null passes (as the official ``min_edu_score`` code).
- ``budget_tokens``: take at most this many *distinct* tokens (framing included) from the source: the first ones
  in file order, the last document cut (tasks stop reading the source there). With ``budget_sample: random`` a
  random subset of its documents instead (``default_rng([seed, j, 1])``, the last one cut, written in source
  order; the whole source is read and tokenized) - as the official recipe, which took the first 10 B tokens of
  the *shuffled* fineweb-edu. A source with fewer tokens is used whole, with a warning.
- ``weight``: the source's share of the output, ``weight / sum(weights)`` of the token stream (all sources need a
  weight, or none). The stream keeps the total ``T = sum of distinct tokens`` (weights redistribute, they add
  nothing): source ``j`` gets ``t_j = T * w_j / sum(w)`` tokens (rounded, summing to ``T``). A source above its
  distinct tokens ``d_j`` is *upsampled*: all its documents ``t_j // d_j`` times, then a subset for the rest; one
  below is *downsampled* to a subset. The subset is drawn with ``default_rng([seed, j])``: documents in a random
  order until ``t_j mod d_j`` tokens, the last one cut, written in source order. Budget and weight together: the
  budget caps the distinct tokens read, the weight then sets the share - so a weighted source can contribute more
  than ``budget_tokens`` tokens, by repeating documents (the manifest records ``distinct_tokens``, ``tokens`` and
  ``repeat``). Shares hold exactly in the token stream, i.e. within one sequence in the shards.
- ``chat``: ``true`` renders each row's conversation with the teacher's chat template
  (``tokenizer.apply_chat_template(messages, tokenize=False)``) into the document text: OpenHermes-style
  ``conversations: [{from, value}]`` (roles ``human``/``gpt``/``system`` -> ``user``/``assistant``/``system``) or
  ``messages: [{role, content}]``; a field name picks the column. A rendered text that already starts with the
  framing prefix token (e.g. a template that writes ``{{ bos_token }}``) or ends with the suffix token does not
  get it twice.

With a budget, each task stops reading a source once it alone holds ``budget_tokens`` of it, so the manifest's
"documents read/kept" then depend on the number of tasks; the tokens kept do not.

Because files are split contiguously and task streams are concatenated in task order, the token stream - and so
the output bytes - do not depend on the number of workers / tasks. Everything is written into the work directory
next to ``output`` and renamed at the very end, so a partial output never looks complete.

**Slurm** (``executor="slurm"``, ``lrc prepare --executor slurm --slurm-partition P``): the same two steps run
as a ``datatrove`` ``SlurmPipelineExecutor`` job array (``tasks`` array tasks, default one per input file), and
the merge runs as a second ``SlurmPipelineExecutor`` job with one task (``FinalizeStep``) that depends on the
first (``afterok``). ``prepare`` returns after submitting (``sbatch``). The work directory
``<output>.tmp-slurm`` and the logs ``<output>.logs`` (datatrove logs, stats, completion markers, Slurm output)
must be on a filesystem shared by the nodes. Re-running the same command after a failure re-submits only the
unfinished tasks (datatrove's completion markers) and the merge; a different command refuses to reuse the work
directory. The merge only streams bytes (``memmap`` reads, sequential writes): it is bound by disk speed.
"""

from lrc.data.prepare.config import PrepareConfig, SlurmOptions
from lrc.data.prepare.filters import Filter, parse_filter
from lrc.data.prepare.finalize import finalize, summary
from lrc.data.prepare.pipeline import prepare, run_prepare
from lrc.data.prepare.plan import Plan, make_plan
from lrc.data.prepare.sources import Source, resolve_sources
from lrc.data.prepare.tokenizer import TokenizerSpec

__all__ = ["Filter", "Plan", "PrepareConfig", "SlurmOptions", "Source", "TokenizerSpec", "finalize", "make_plan",
           "parse_filter", "prepare", "resolve_sources", "run_prepare", "summary"]
