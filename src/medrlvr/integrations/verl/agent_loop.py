"""The verl agent loop of a ``medrlvr verl prepare`` run (imported by verl only: needs ``verl==0.9.1``).

verl's single-turn agent loop with medrlvr's stop strings (``TrainConfig.stop``, default ``("</answer>",)``):
verl 0.9.1 has no config key for stop strings, so they travel through the agent loop registry
(``DIR/agent_loops.yaml``, ``stop: [...]``) and are added to each request's sampling parameters, kept in the
output (vLLM ``include_stop_str_in_output``, SGLang ``no_stop_trim``) so the reward sees ``</answer>``.
The prompt is tokenized by verl itself (the verbatim chat template set by ``prepare``).
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop


class MedrlvrSingleTurnAgentLoop(SingleTurnAgentLoop):
    """``single_turn_agent`` plus stop strings."""

    def __init__(self, *args: Any, stop: Any = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stop = [str(s) for s in (stop or [])]

    def sampling_params_with_stop(self, sampling_params: dict[str, Any]) -> dict[str, Any]:
        if not self.stop:
            return sampling_params
        sp = dict(sampling_params)
        sp["stop"] = list(self.stop)
        if str(self.rollout_config.get("name", "vllm")) == "sglang":
            sp["no_stop_trim"] = True
        else:
            sp["include_stop_str_in_output"] = True
        return sp

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any):
        return await super().run(self.sampling_params_with_stop(sampling_params), priority=priority, **kwargs)
