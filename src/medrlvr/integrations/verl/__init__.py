"""Run medrlvr's recipe on verl, and read verl runs back (``medrlvr verl prepare|launch``, ``medrlvr report``).

- :mod:`~medrlvr.integrations.verl.mapping`: ``TrainConfig`` -> verl's Hydra overrides, refusals, the parquet row;
- :mod:`~medrlvr.integrations.verl.prepare`: the run directory, its scripts, ``launch`` and the CLI;
- :mod:`~medrlvr.integrations.verl.reward`: :func:`compute_score`, the reward entry point verl loads;
- :mod:`~medrlvr.integrations.verl.readback`: verl's dumps -> a medrlvr run view for ``medrlvr report``;
- :mod:`~medrlvr.integrations.verl.agent_loop`: the agent loop verl loads (imports verl).

Pinned: verl ``0.9.1`` (:data:`VERL_VERSION`). Every key below was checked against that release's own code
(``tests_verl/``, run in the ``.venv-verl`` environment by ``make test-verl``): the Hydra trainer config in
struct mode, ``verl.utils.config.validate_config``, ``RLHFDataset``, the single-turn agent loop's prompt
tokenization, the custom reward loader with the ``naive`` reward manager, and the generation dump writer.

``prepare(cfg, out)`` writes a verl run directory::

    DIR/train.parquet      the exact question stream ``medrlvr train`` would use (max_steps x prompts_per_step
                           rows, per-epoch permutation and option shuffle of :class:`medrlvr.train.stream.PromptStream`),
                           so verl reads it in order (data.shuffle=False)
    DIR/val.parquet        the first eval_limit eval questions (all when 0)
    DIR/medrlvr_reward.py  verl's custom reward function (``compute_score``), medrlvr's scheme and pre-fill baked in
    DIR/agent_loops.yaml   verl agent loop ``medrlvr_single_turn``: the rendered prompt verbatim, the stop strings
    DIR/config.yaml        the resolved medrlvr TrainConfig (shown by the report)
    DIR/medrlvr_verl.json  the marker the report detects: verl version, overrides, scheme, template
    DIR/run.sh             ``python -m verl.trainer.main_ppo <overrides>`` (one node), extra args are appended
    DIR/run_multinode.sh   the same through a Ray cluster: ``head`` / ``worker HEAD_IP`` / ``submit``

Prompt fidelity: each row's ``prompt`` is one user message whose content is ``medrlvr.prompts.render`` (R1-Zero
text with the ``<think>`` pre-fill by default), and ``actor_rollout_ref.model.custom_chat_template`` is
:data:`VERBATIM_TEMPLATE`, which renders that content and nothing else: no chat markup reaches a base model.
The prompt's token ids are then those of ``tokenizer(render(rec), add_special_tokens=False)`` (tested token for
token with the SmolLM2 tokenizer through verl's own agent loop).

Read-back (:func:`convert_run`): verl writes ``rollouts/<step>.jsonl`` and ``validation/<step>.jsonl`` (its
``_write_generations``: one JSON object per sample with ``input``, ``output``, ``gts``, ``score``, ``step`` and
any reward extra info) and the ``file`` logger's ``metrics.jsonl`` (``{"step": s, "data": {name: value}}``).
The converter re-scores every dumped response with :func:`medrlvr.reward.score` (same scheme, pre-fill joined),
writes ``DIR/medrlvr_view/{samples,metrics}.jsonl`` in medrlvr's layout and the last validation step's
``results.json``; ``medrlvr report DIR`` then draws the same report as for a medrlvr run.

Simplifications, stated: ``mini_batch_size`` must be a multiple of ``samples_per_prompt`` (verl counts
mini-batches in prompts); micro-batches become per-GPU micro-batches; a medrlvr value without a verl
equivalent is refused with the key named (:func:`check_mappable`), never dropped.
"""

from medrlvr.integrations.verl.mapping import (FIELD_MAP, MARKER, VERL_VERSION, check_mappable, mapping_table,
                                               verl_overrides, verl_row)
from medrlvr.integrations.verl.prepare import add_cli, launch, prepare, training_stream
from medrlvr.integrations.verl.readback import convert_run, is_verl_run
from medrlvr.integrations.verl.reward import compute_score

__all__ = ["FIELD_MAP", "MARKER", "VERL_VERSION", "add_cli", "check_mappable", "compute_score", "convert_run",
           "is_verl_run", "launch", "mapping_table", "prepare", "training_stream", "verl_overrides", "verl_row"]
