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

``prepare(cfg, out)`` writes a verl run directory (its files: :mod:`~medrlvr.integrations.verl.prepare`).

Prompt fidelity: each row's ``prompt`` is one user message whose content is ``medrlvr.prompts.render`` (R1-Zero
text with the ``<think>`` pre-fill by default), and ``actor_rollout_ref.model.custom_chat_template`` is
:data:`VERBATIM_TEMPLATE`, which renders that content and nothing else: no chat markup reaches a base model.
The prompt's token ids are then those of ``tokenizer(render(rec), add_special_tokens=False)`` (tested token for
token with the SmolLM2 tokenizer through verl's own agent loop).

Read-back: :func:`convert_run` re-scores verl's generation dumps and writes a medrlvr run view, so that
``medrlvr report DIR`` draws the same report as for a medrlvr run (:mod:`~medrlvr.integrations.verl.readback`).

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
