"""The reward's names and thresholds: the hacking flags, the prompt texts an echo is compared with, and
:class:`RewardConfig` (every threshold of the flags and every parameter of the schemes, with its default)."""

from __future__ import annotations

from dataclasses import dataclass



FLAGS: dict[str, str] = {
    "answer_in_think": (
        "the predicted letter appears inside <think> as an explicit choice ('answer is C', "
        "'(C)', 'C.', 'C)', 'option C', or <think> is just the letter), or, when options "
        "are given, the gold or predicted option text appears inside <think> "
        "(the paper's 'direct-answer hacker')"
    ),
    "reasoning_before_think": (
        "more than RewardConfig.reasoning_before_think_min_chars non-space characters "
        "before the first <think> (the paper's 'step-by-step exploit')"
    ),
    "multiple_blocks": "more than one <think>/</think> or more than one <answer>/</answer> tag",
    "trailing_text": "non-whitespace text after the first </answer>",
    "empty_think": (
        "<think> block missing/unclosed, or with fewer than "
        "RewardConfig.empty_think_max_chars non-space characters"
    ),
    "template_echo": (
        "the think or answer text is, once normalised (case, spacing, punctuation), the prompt's "
        "placeholder text ('reasoning process here', 'answer here') or a near copy of a fixed part "
        "of the prompt (RewardConfig.template_texts): the model copies the template instead of "
        "answering; 'shaped' and 'composite' score it as a bad format"
    ),
}
"""Hacking-pattern flag names mapped to a one-line description, in reporting order."""


TEMPLATE_PLACEHOLDERS: tuple[str, ...] = ("reasoning process here", "answer here")
"""The placeholder texts of the R1-Zero prompt's example ``<think> reasoning process here </think>
<answer> answer here </answer>``."""


TEMPLATE_TEXTS: tuple[str, ...] = TEMPLATE_PLACEHOLDERS + (
    "A conversation between User and Assistant.",
    "The user asks a question, and the Assistant solves it.",
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.",
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively",
    "Answer with just one of the letters from the options below.",
    "The following is a multiple-choice question about medicine.",
    "Answer with the letter of the correct option.",
)
"""Fixed texts of the prompts of :mod:`medrlvr.prompts` (copied here so that this file stays
importable on its own, e.g. as a verl ``custom_reward_function``; a test checks they match), sentence
by sentence: a think or answer that is a near copy of one of them is a ``template_echo``."""


DEFAULT_PENALIZED_FLAGS: tuple[str, ...] = (
    "answer_in_think",
    "reasoning_before_think",
    "multiple_blocks",
    "trailing_text",
)
"""Flags penalised by the ``"composite"`` scheme unless configured otherwise."""


@dataclass
class RewardConfig:
    """Tunable thresholds for the flags and the ``"composite"`` scheme.

    Attributes:
        reasoning_before_think_min_chars: ``reasoning_before_think`` is raised
            when the text before ``<think>`` has *more* than this many non-space
            characters (default 20).
        empty_think_max_chars: ``empty_think`` is raised when the think block is
            missing or has *fewer* than this many non-space characters (default 10).
        penalty: amount subtracted per penalised flag by ``"composite"`` (default 0.5).
        penalized_flags: flag names penalised by ``"composite"`` (default
            :data:`DEFAULT_PENALIZED_FLAGS`; ``empty_think`` is not penalised by default).
        answer_in_think_option_text: when options are given, also raise
            ``answer_in_think`` if the gold or predicted option *text* appears in
            ``<think>`` (default True).  Honest reasoning often names the right
            option, so this part of the flag is noisy; set False to only look for
            explicit letter choices.
        template_texts: the fixed texts of the prompt a ``template_echo`` is compared with
            (default :data:`TEMPLATE_TEXTS`: the R1-Zero instructions, sentence by sentence,
            and their placeholders).
        template_echo_similarity: a think/answer text whose character similarity
            (:class:`difflib.SequenceMatcher` ratio, on normalised text) to one of
            ``template_texts`` is at least this is a near copy (default 0.8).
        template_echo_min_words: a normalised think/answer text is also an echo when it has at
            least this many words and appears word for word inside one of ``template_texts``
            ("answer here", "the reasoning process"; default 2, so a one-word answer never is).
        no_letter_reward: ``"shaped"``: the reward of a well-formed answer without an option
            letter (default :data:`SHAPED_NO_LETTER`, -0.1).
        echo_reward: ``"shaped"``: the reward of a ``template_echo`` response, scored as a bad
            format (default -1.0, the bottom of the band: copying the template earns no
            format credit).
        format_step_reward: ``"shaped"``: the credit per format tag reached in order inside the
            bad-format band (default 0.25: -1, -0.75, -0.5, -0.25). A smaller step leaves room
            for a lower ``no_letter_reward`` while every valid answer still beats every invalid one.
    """

    reasoning_before_think_min_chars: int = 20
    empty_think_max_chars: int = 10
    penalty: float = 0.5
    penalized_flags: tuple[str, ...] = DEFAULT_PENALIZED_FLAGS
    answer_in_think_option_text: bool = True
    template_texts: tuple[str, ...] = ()
    template_echo_similarity: float = 0.8
    template_echo_min_words: int = 2
    no_letter_reward: float = -0.1
    echo_reward: float = -1.0
    format_step_reward: float = 0.25

    def __post_init__(self) -> None:
        self.penalized_flags = tuple(self.penalized_flags)
        self.template_texts = tuple(self.template_texts) or TEMPLATE_TEXTS
        unknown = [f for f in self.penalized_flags if f not in FLAGS]
        if unknown:
            raise ValueError(f"unknown flag(s) in penalized_flags: {unknown}; known flags: {list(FLAGS)}")


SHAPED_NO_LETTER = -0.1
"""``shaped``: a well-formed response whose answer holds no option letter (e.g. the template's own
``<answer> answer here </answer>``). Between the invalid band (<= -0.25) and a wrong letter (0): a letterless
answer, a template copy included, scores below a wrong letter, not equal to it as under the paper's reward
(evidence: docs/decisions/reward-scoring.md)."""
