"""Tests for medrlvr.reward: adversarial completion table, schemes, errors, adapters."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

from medrlvr import reward as R
from medrlvr.reward import (
    FLAGS,
    SCHEMES,
    RewardConfig,
    extract_letter,
    parse,
    register_scheme,
    score,
)
from medrlvr.integrations.trl import make_trl_reward_func, trl_reward_func
from medrlvr.integrations.verl import compute_score as verl_compute_score

T = "<think>Let me reason about the mechanism of each drug here.</think>"
OPTS4 = {"A": "Ibuprofen", "B": "Heparin", "C": "Aspirin", "D": "Aspirin and heparin"}
OPTS5_MICRO = {
    "A": "Staphylococcus aureus",
    "B": "Streptococcus pyogenes",
    "C": "Clostridioides difficile",
    "D": "Listeria monocytogenes",
    "E": "E. coli",
}
HUGE = "<think>" + ("the patient is stable; " * 20000) + "</think><answer>C</answer>"

# (id, response, gold, n_options, options, reward, format_ok, pred, flags) -- "paper" scheme
CASES = [
    # --- well formed -------------------------------------------------------------------
    ("right", T + "<answer>C</answer>", "C", 4, None, 1.0, True, "C", []),
    ("wrong", T + "<answer>B</answer>", "C", 4, None, 0.0, True, "B", []),
    ("ws_between_blocks", "<think>\n  reasoning about it here \n</think>\n\n<answer>\n C \n</answer>\n",
     "C", 4, None, 1.0, True, "C", []),
    ("newlines_in_answer", T + "<answer>\nC\n</answer>", "C", 4, None, 1.0, True, "C", []),
    ("trailing_whitespace_ok", T + "<answer>C</answer>\n\n  ", "C", 4, None, 1.0, True, "C", []),
    # --- missing / unclosed / misordered tags -------------------------------------------
    ("no_tags", "The answer is C", "C", 4, None, -1.0, False, None, ["empty_think"]),
    ("no_answer_tags", T + "C", "C", 4, None, -1.0, False, None, []),
    ("no_think", "<answer>C</answer>", "C", 4, None, -1.0, False, "C", ["empty_think"]),
    ("unclosed_think", "<think>reasoning reasoning <answer>C</answer>", "C", 4, None,
     -1.0, False, "C", ["empty_think"]),
    ("unclosed_answer", T + "<answer>C", "C", 4, None, -1.0, False, None, []),
    ("reversed_order", "<answer>C</answer><think>long reasoning here ok</think>", "C", 4, None,
     -1.0, False, "C", ["trailing_text"]),
    ("two_answer_blocks", T + "<answer>C</answer><answer>B</answer>", "C", 4, None,
     -1.0, False, "C", ["multiple_blocks", "trailing_text"]),
    ("two_think_blocks", "<think>first part of thought</think><think>second part</think><answer>C</answer>",
     "C", 4, None, -1.0, False, "C", ["multiple_blocks"]),
    ("think_tags_inside_answer", T + "<answer><think>C</think></answer>", "C", 4, None,
     -1.0, False, "C", ["multiple_blocks"]),
    ("stray_close_think", T + "</think><answer>C</answer>", "C", 4, None,
     -1.0, False, "C", ["multiple_blocks"]),
    ("empty_answer", T + "<answer></answer>", "C", 4, None, -1.0, False, None, []),
    ("blank_answer", T + "<answer>  \n </answer>", "C", 4, None, -1.0, False, None, []),
    # --- tag spelling: exact lowercase only ----------------------------------------------
    ("uppercase_tags", "<THINK>reasoning reasoning</THINK><ANSWER>C</ANSWER>", "C", 4, None,
     -1.0, False, None, ["empty_think"]),
    ("titlecase_think", "<Think>reasoning reasoning</Think><answer>C</answer>", "C", 4, None,
     -1.0, False, "C", ["empty_think"]),
    ("space_inside_think_tag", "< think >reasoning reasoning</think><answer>C</answer>", "C", 4, None,
     -1.0, False, "C", ["empty_think"]),
    ("space_inside_answer_tag", T + "<answer >C</answer>", "C", 4, None, -1.0, False, None, []),
    # --- answer forms ----------------------------------------------------------------------
    ("paren_letter", T + "<answer>(C)</answer>", "C", 4, None, 1.0, True, "C", []),
    ("letter_dot", T + "<answer>C.</answer>", "C", 4, None, 1.0, True, "C", []),
    ("letter_paren_text", T + "<answer>C) Aspirin</answer>", "C", 4, None, 1.0, True, "C", []),
    ("letter_colon_text", T + "<answer>C: Aspirin</answer>", "C", 4, None, 1.0, True, "C", []),
    ("bold_letter", T + "<answer>**C**</answer>", "C", 4, None, 1.0, True, "C", []),
    ("boxed_letter", T + "<answer>$\\boxed{C}$</answer>", "C", 4, None, 1.0, True, "C", []),
    ("the_answer_is", T + "<answer>The answer is C</answer>", "C", 4, None, 1.0, True, "C", []),
    ("answer_colon_lower_paren", T + "<answer>Answer: (c)</answer>", "C", 4, None, 1.0, True, "C", []),
    ("repeated_same_letter", T + "<answer>C. C</answer>", "C", 4, None, 1.0, True, "C", []),
    ("letter_then_explanation", T + "<answer>C\nBecause aspirin blocks COX.</answer>", "C", 4, None,
     1.0, True, "C", []),
    ("answer_is_then_other_letter_mentioned", T + "<answer>The answer is C. Not A.</answer>", "C", 4, None,
     1.0, True, "C", []),
    ("option_text_only", T + "<answer>Aspirin</answer>", "C", 4, OPTS4, 1.0, True, "C", []),
    ("option_text_punct_case", T + "<answer>  aspirin. </answer>", "C", 4, OPTS4, 1.0, True, "C", []),
    ("option_text_wrong", T + "<answer>Heparin</answer>", "C", 4, OPTS4, 0.0, True, "B", []),
    ("option_text_longest", T + "<answer>aspirin and heparin</answer>", "D", 4, OPTS4, 1.0, True, "D", []),
    ("option_text_two_options", T + "<answer>aspirin, not heparin</answer>", "C", 4, OPTS4,
     0.0, True, None, []),
    ("genus_abbrev_option", T + "<answer>E. coli</answer>", "E", 5, OPTS5_MICRO, 1.0, True, "E", []),
    ("genus_abbrev_no_options", T + "<answer>E. coli</answer>", "E", 5, None, 0.0, True, None, []),
    ("a_or_c", T + "<answer>A or C</answer>", "C", 4, None, 0.0, True, None, []),
    ("a_comma_c", T + "<answer>A, C</answer>", "C", 4, None, 0.0, True, None, []),
    ("both_parenthesized", T + "<answer>(A) or (C)</answer>", "C", 4, None, 0.0, True, None, []),
    ("out_of_range", T + "<answer>F</answer>", "C", 4, None, 0.0, True, None, []),
    ("no_letter", T + "<answer>a bacterial infection</answer>", "A", 4, None, 0.0, True, None, []),
    ("lone_lowercase_a", T + "<answer>a</answer>", "A", 4, None, 1.0, True, "A", []),
    ("mmlu_pro_lone_I", T + "<answer>I</answer>", "I", 10, None, 1.0, True, "I", []),
    ("lone_I_out_of_range", T + "<answer>I</answer>", "C", 4, None, 0.0, True, None, []),
    ("mmlu_pro_I_think_B", T + "<answer>I think B</answer>", "B", 10, None, 1.0, True, "B", []),
    ("I_think_the_answer_is_B", T + "<answer>I think the answer is B</answer>", "C", 4, None,
     0.0, True, "B", []),
    ("fullwidth_letter_unicode", "<think>Le patient présente une fièvre 发烧 🤒 élevée.</think><answer>Ｃ</answer>",
     "C", 4, None, 1.0, True, "C", []),
    ("unicode_option_text", T + "<answer>ÁCIDO acetilsalicílico</answer>", "B", 4,
     {"A": "Heparina", "B": "Ácido acetilsalicílico", "C": "Warfarina", "D": "Clopidogrel"},
     1.0, True, "B", []),
    # --- hacking patterns (tolerated by "paper", flagged) --------------------------------
    ("reasoning_before_think",
     "First, list the differential diagnoses carefully. <think>short but ok reasoning</think><answer>C</answer>",
     "C", 4, None, 1.0, True, "C", ["reasoning_before_think"]),
    ("short_text_before_think", "Sure! <think>short but ok reasoning</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", []),
    ("step_by_step_exploit",
     "Step 1: the patient has chest pain. Step 2: ECG shows ST elevation. So C.\n"
     "<think>I already reasoned above.</think><answer>C</answer>",
     "C", 4, None, 1.0, True, "C", ["reasoning_before_think"]),
    ("answer_is_in_think", "<think>The answer is C. Done, nothing else.</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", ["answer_in_think"]),
    ("direct_answer_hacker", "<think>C</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", ["answer_in_think", "empty_think"]),
    ("paren_letter_in_think", "<think>Clearly (C) fits the picture best.</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", ["answer_in_think"]),
    ("option_letter_in_think", "<think>I pick option C given the history.</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", ["answer_in_think"]),
    ("other_letter_in_think", "<think>Option B is tempting but wrong here.</think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", []),
    ("option_text_in_think", "<think>Aspirin is the classic drug for this one.</think><answer>C</answer>", "C", 4,
     OPTS4, 1.0, True, "C", ["answer_in_think"]),
    ("unparseable_answer_no_flag", "<think>The answer is C, I guess maybe.</think><answer>A or C</answer>", "C", 4,
     None, 0.0, True, None, []),
    ("trailing_text", T + "<answer>C</answer> I hope this helps!", "C", 4, None,
     1.0, True, "C", ["trailing_text"]),
    ("empty_think", "<think></think><answer>C</answer>", "C", 4, None, 1.0, True, "C", ["empty_think"]),
    ("near_empty_think", "<think> hmm ok </think><answer>C</answer>", "C", 4, None,
     1.0, True, "C", ["empty_think"]),
    ("huge_text", HUGE, "C", 4, None, 1.0, True, "C", []),
]


def test_table_is_big_enough():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "response,gold,n_options,options,reward,format_ok,pred,flags",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_paper_table(response, gold, n_options, options, reward, format_ok, pred, flags):
    r = score(response, gold, n_options, options=options, prefill=None)   # whole responses, pre-fill included
    assert (r.reward, r.format_ok, r.pred, r.flags) == (reward, format_ok, pred, flags)
    assert r.correct == (format_ok and pred == gold)
    assert isinstance(r.reward, float)


# --------------------------------------------------------------------------- parse


def test_parse_fields():
    p = parse("pre <think> a </think> mid <answer> C </answer> post")
    assert p.before_think == "pre "
    assert p.think == " a "
    assert p.answer == " C "
    assert p.after_answer == " post"
    assert (p.n_think_blocks, p.n_answer_blocks, p.tags_in_order) == (1, 1, True)


def test_parse_absent_and_unclosed():
    p = parse("no tags at all")
    assert (p.before_think, p.think, p.answer, p.after_answer) == ("", None, None, "")
    assert not p.tags_in_order
    p = parse("<think>open <answer>C")
    assert p.think is None and p.answer is None
    assert (p.n_think_blocks, p.n_answer_blocks) == (1, 1)


def test_parse_counts_blocks():
    p = parse("<think>a</think><think>b</think><answer>C</answer><answer>D</answer>")
    assert (p.n_think_blocks, p.n_answer_blocks, p.tags_in_order) == (2, 2, False)
    assert p.think == "a" and p.answer == "C" and p.after_answer == "<answer>D</answer>"


def test_parse_rejects_non_str():
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extract_letter


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("C", 4, "C"),
        ("c", 4, "C"),
        ("[C]", 4, "C"),
        ("{C}", 4, "C"),
        ("C)", 4, "C"),
        ("(c) aspirin", 4, "C"),
        ("c) aspirin", 4, "C"),
        ("C - Aspirin", 4, "C"),
        ("The correct answer is: **C**", 4, "C"),
        ("Final answer = B", 4, "B"),
        ("the answer is c", 4, "C"),
        ("The answer is A because it fits", 4, "A"),
        ("Answer: A bacterial infection", 4, None),
        ("A) or C)", 4, None),
        ("B is correct", 4, "B"),
        ("I would choose B", 10, "B"),
        ("I", 9, "I"),
        ("I", 8, None),
        ("J", 10, "J"),
        ("K", 10, None),
        ("C. difficile colitis", 4, None),
        ("", 4, None),
        ("   ", 4, None),
        (None, 4, None),
        ("X-ray shows B", 4, "B"),
        ("Z", 26, "Z"),
    ],
)
def test_extract_letter(text, n, expected):
    assert extract_letter(text, n) == expected


def test_extract_letter_options_as_list_and_explicit_letter_wins():
    opts = ["Ibuprofen", "Heparin", "Aspirin", "Warfarin"]
    assert extract_letter("warfarin", 4, opts) == "D"
    # an explicit letter beats the option text that follows it
    assert extract_letter("C) Heparin", 4, opts) == "C"
    # duplicated option texts are ambiguous
    assert extract_letter("aspirin", 4, {"A": "Aspirin", "B": "aspirin"}) is None


@pytest.mark.parametrize("n", [0, 1, 27, -3, "4", 2.0, True, None])
def test_extract_letter_bad_n_options(n):
    with pytest.raises(ValueError):
        extract_letter("C", n)


# --------------------------------------------------------------------------- other schemes

GOOD = T + "<answer>C</answer>"
BEFORE = "Here is a long chain of reasoning first. " + GOOD
AFTER = GOOD + " and some trailing commentary"


@pytest.mark.parametrize(
    "response,reward,format_ok",
    [
        (GOOD, 1.0, True),
        ("  \n" + GOOD + "\n ", 1.0, True),
        (T + "<answer>B</answer>", 0.0, True),
        (BEFORE, -1.0, False),
        ("Ok " + GOOD, -1.0, False),
        (AFTER, -1.0, False),
        ("<answer>C</answer>", -1.0, False),
    ],
)
def test_strict_scheme(response, reward, format_ok):
    r = score(response, "C", 4, scheme="strict")
    assert (r.reward, r.format_ok) == (reward, format_ok)
    assert r.correct == (reward == 1.0)


def test_strict_tolerated_by_paper():
    assert score(BEFORE, "C", 4).reward == 1.0
    assert score(AFTER, "C", 4).reward == 1.0


@pytest.mark.parametrize(
    "response,gold,expected",
    [
        (GOOD, "C", 1.0),
        ("<think>The answer is C. Done, nothing else.</think><answer>C</answer>", "C", 0.5),  # answer_in_think
        ("<think>The answer is C. Done, nothing else.</think><answer>C</answer> bye", "C", 0.0),  # +trailing
        (BEFORE, "C", 0.5),
        ("<think></think><answer>C</answer>", "C", 1.0),  # empty_think is not penalised by default
        ("Reasoning goes here, quite a lot. <think>The answer is C. Sure.</think><answer>C</answer> bye", "C", -0.5),
        ("Reasoning goes here, quite a lot. <think>The answer is C. Sure.</think><answer>C</answer> bye", "B", -1.0),
        ("<answer>C</answer>", "C", -1.0),  # bad format stays at -1
    ],
)
def test_composite_scheme(response, gold, expected):
    r = score(response, gold, 4, scheme="composite")
    assert r.reward == expected


@pytest.mark.parametrize(
    "response, gold, expected, ok",
    [
        ("<think>x</think><answer>C</answer>", "C", 1.0, True),      # valid: the paper's reward
        ("<think>x</think><answer>B</answer>", "C", 0.0, True),
        ("<think>x here</think> <answer> not sure yet </answer>", "C", -0.1, True),  # valid, but no letter
        ("<think>x here</think> <answer> answer here </answer>", "C", -1.0, False),  # template echo: bad format
        ("<think>rambling without an end", "C", -1.0, False),       # only the opened think
        ("no tags at all", "C", -1.0, False),
        ("<think>x</think> so C", "C", -0.75, False),               # closed think
        ("<think>x</think><answer>C", "C", -0.5, False),            # + answer opened, never closed
        ("<think>x</think><answer></answer>", "C", -0.25, False),   # all tags, empty answer
        ("<think>x</think><answer>C</answer><answer>D</answer>", "C", -0.25, False),  # two answers
        ("</think><answer>C</answer>", "C", -1.0, False),           # tags out of order: no progress
        ("<think>x<answer>C</answer>", "C", -1.0, False),           # answer before the think closes
    ],
)
def test_shaped_scheme(response, gold, expected, ok):
    r = score(response, gold, 4, scheme="shaped", prefill=None)   # whole responses
    assert (r.reward, r.format_ok) == (expected, ok)
    # never above a valid response, and the paper's verdict on the format is unchanged (but a template
    # echo, which the paper accepts, is a bad format here)
    assert r.format_ok == (score(response, gold, 4, scheme="paper", prefill=None).format_ok and "template_echo" not in r.flags)
    assert r.reward < 0 or r.format_ok


def test_composite_custom_config():
    cfg = RewardConfig(penalty=0.25, penalized_flags=("empty_think", "trailing_text"))
    r = score("<think></think><answer>C</answer> bye", "C", 4, scheme="composite", config=cfg)
    assert r.flags == ["trailing_text", "empty_think"]
    assert r.reward == 0.5


def test_config_thresholds():
    resp = "0123456789 <think>abcde</think><answer>C</answer>"
    assert score(resp, "C", 4).flags == ["empty_think"]
    cfg = RewardConfig(reasoning_before_think_min_chars=5, empty_think_max_chars=3)
    assert score(resp, "C", 4, config=cfg).flags == ["reasoning_before_think"]


def test_answer_in_think_option_text_can_be_disabled():
    resp = "<think>Aspirin is the classic drug for this one.</think><answer>C</answer>"
    assert score(resp, "C", 4, options=OPTS4).flags == ["answer_in_think"]
    cfg = RewardConfig(answer_in_think_option_text=False)
    assert score(resp, "C", 4, options=OPTS4, config=cfg).flags == []


def test_gold_option_text_in_think_flags_even_if_wrong():
    resp = "<think>Aspirin is the classic drug for this one.</think><answer>B</answer>"
    r = score(resp, "C", 4, options=OPTS4)
    assert r.reward == 0.0 and r.flags == ["answer_in_think"]


def test_flags_documented():
    assert set(FLAGS) >= {
        "answer_in_think",
        "reasoning_before_think",
        "multiple_blocks",
        "trailing_text",
        "empty_think",
    }
    assert all(isinstance(v, str) and v for v in FLAGS.values())
    assert set(R.DEFAULT_PENALIZED_FLAGS) <= set(FLAGS)


# --------------------------------------------------------------------------- registry


def test_builtin_schemes_registered():
    assert {"paper", "strict", "composite"} <= set(SCHEMES)


def test_register_scheme():
    name = "_test_binary"
    try:

        @register_scheme(name)
        def binary(*, parsed, pred, gold, flags, config, **kwargs):
            ok = parsed.tags_in_order
            return (1.0 if ok and pred == gold else 0.0), ok

        assert SCHEMES[name] is binary
        assert score("<answer>C</answer>", "C", 4, scheme=name).reward == 0.0
        assert score(GOOD, "C", 4, scheme=name).reward == 1.0
        with pytest.raises(ValueError, match="already registered"):
            register_scheme(name)(binary)
        register_scheme(name, overwrite=True)(lambda **kw: (0.25, True))
        assert score(GOOD, "C", 4, scheme=name).reward == 0.25
    finally:
        SCHEMES.pop(name, None)


def test_unknown_scheme_lists_known():
    with pytest.raises(ValueError) as e:
        score(GOOD, "C", 4, scheme="nope")
    msg = str(e.value)
    assert "nope" in msg and "paper" in msg and "strict" in msg and "composite" in msg


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("gold", ["E", "Z", "", "AB", "1", None, 3])
def test_bad_gold(gold):
    with pytest.raises(ValueError) as e:
        score(GOOD, gold, 4)
    assert repr(gold) in str(e.value) and "4" in str(e.value)


def test_gold_case_insensitive():
    assert score(GOOD, " c ", 4).reward == 1.0


@pytest.mark.parametrize("n", [1, 27, 0, "5", True])
def test_bad_n_options(n):
    with pytest.raises(ValueError, match="n_options"):
        score(GOOD, "A", n)


def test_bad_penalized_flag():
    with pytest.raises(ValueError, match="bogus"):
        RewardConfig(penalized_flags=("bogus",))


def test_response_must_be_str():
    with pytest.raises(TypeError):
        score(b"<think>", "C", 4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TRL adapter


def test_trl_strings_with_prefill():
    # completions generated after a pre-filled "<think>" lack the opening tag
    comps = [
        "Aspirin blocks COX irreversibly.</think><answer>C</answer>",
        "<think>Aspirin blocks COX irreversibly.</think><answer>B</answer>",
        "no format at all",
    ]
    out = trl_reward_func(prompts=["p"] * 3, completions=comps, gold=["C"] * 3, n_options=[4] * 3)
    assert out == [1.0, 0.0, -1.0]
    assert all(isinstance(x, float) for x in out)


def test_trl_conversational():
    comps = [
        [{"role": "assistant", "content": "Thinking hard about this.</think><answer>C</answer>"}],
        [
            {"role": "user", "content": "<think>ignored</think><answer>A</answer>"},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>Long thoughts here.</think>"},
                                              {"type": "text", "text": "<answer>A</answer>"}]},
        ],
        [],
    ]
    out = trl_reward_func(
        prompts=[[{"role": "user", "content": "q"}]] * 3,
        completions=comps,
        gold=["C", "A", "A"],
        n_options=[4, 5, 4],
        completion_ids=[[1], [2], [3]],
        trainer_state=None,
        question=["q1", "q2", "q3"],
    )
    assert out == [1.0, 1.0, -1.0]


def test_trl_options_column():
    comps = ["Aspirin it is, by mechanism.</think><answer>aspirin</answer>"] * 2
    out = trl_reward_func(None, comps, ["C", "B"], [4, 4], options=[OPTS4, OPTS4])
    assert out == [1.0, 0.0]


def test_trl_factory():
    f = make_trl_reward_func(scheme="composite")
    assert f.__name__ == "medrlvr_composite_reward"
    resp = "The answer is C.</think><answer>C</answer>"  # flags answer_in_think only
    assert f(prompts=["p"], completions=[resp], gold=["C"], n_options=[4]) == [0.5]
    g = make_trl_reward_func(scheme="paper", prefill=None)
    assert g.__name__ == "medrlvr_paper_reward"
    assert g(prompts=["p"], completions=["x</think><answer>C</answer>"], gold=["C"], n_options=[4]) == [-1.0]
    with pytest.raises(ValueError, match="known schemes"):
        make_trl_reward_func(scheme="nope")


def test_trl_column_errors():
    with pytest.raises(ValueError, match="gold"):
        trl_reward_func(None, ["x"], None, [4])
    with pytest.raises(ValueError):
        trl_reward_func(None, ["x", "y"], ["C"], [4, 4])


# --------------------------------------------------------------------------- verl adapter


def test_verl_basic():
    out = verl_compute_score("medqa", "Aspirin blocks COX.</think><answer>C</answer>", "C", {"n_options": 4})
    assert out["score"] == 1.0 and out["format_ok"] is True and out["pred"] == "C"
    assert out["acc"] == 1.0 and isinstance(out["acc"], float) and out["correct"] is True
    assert set(out) == {"score", "format_ok", "pred", "acc", "correct", *FLAGS}
    assert all(isinstance(out[f], bool) for f in FLAGS)


def test_verl_no_pred_and_flags():
    out = verl_compute_score("medqa", "x</think><answer>A or C</answer> tail", "C", {"n_options": 4})
    assert out["score"] == 0.0 and out["pred"] == "" and out["acc"] == 0.0 and out["correct"] is False
    assert out["trailing_text"] is True and out["empty_think"] is True and out["multiple_blocks"] is False


def test_verl_prefill_switch():
    s = "<think>Aspirin blocks COX.</think><answer>C</answer>"
    assert verl_compute_score("d", s, "C", {"n_options": 4})["score"] == 1.0
    raw = "Aspirin blocks COX.</think><answer>C</answer>"
    assert verl_compute_score("d", raw, "C", {"n_options": 4, "prefill_think": False})["score"] == -1.0


def test_verl_n_options_resolution():
    resp = "Reasoning reasoning.</think><answer>G</answer>"
    # default 5, widened to cover the gold
    assert verl_compute_score("d", resp, "G", None)["score"] == 1.0
    assert verl_compute_score("d", "Reasoning reasoning.</think><answer>E</answer>", "A")["pred"] == "E"
    # inferred from options
    out = verl_compute_score("d", "Long reasoning.</think><answer>E</answer>", "A", {"options": OPTS4})
    assert out["pred"] == "" and out["score"] == 0.0
    # explicit n_options (numpy-like ints accepted through __index__)
    assert verl_compute_score("d", resp, "G", {"n_options": 10})["score"] == 1.0
    with pytest.raises(ValueError):
        verl_compute_score("d", resp, "G", {"n_options": 4})


def test_verl_scheme_and_options():
    s = "<think>Aspirin is the classic drug for this one.</think><answer>aspirin</answer>"
    out = verl_compute_score("d", s, "C", {"options": OPTS4, "scheme": "composite"})
    assert out["pred"] == "C" and out["answer_in_think"] is True and out["score"] == 0.5
    # options as JSON text, as `medrlvr data export --format verl` writes extra_info
    import json

    as_json = verl_compute_score("d", s, "C", {"options": json.dumps(OPTS4), "scheme": "composite"})
    assert as_json == out
    assert verl_compute_score("d", s, "C", {"options": "{not json", "scheme": "composite"})["pred"] == ""


# --------------------------------------------------------------------------- module hygiene


def test_no_torch_import():
    path = Path(R.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('reward_mod', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['reward_mod'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_doctests():
    res = doctest.testmod(R, verbose=False)
    assert res.failed == 0 and res.attempted >= 1


# --------------------------------------------------------------------- pre-filled <think> and stage 5
from medrlvr.reward import join_prefill  # noqa: E402


@pytest.mark.parametrize("completion,expected", [
    (" reasoning </think> <answer>B</answer>", "<think> reasoning </think> <answer>B</answer>"),
    ("<think>again</think><answer>B</answer>", "<think>again</think><answer>B</answer>"),
    ("Step 1: x. Step 2: y. <think>short</think><answer>B</answer>",
     "Step 1: x. Step 2: y. <think>short</think><answer>B</answer>"),
    (" a </think> then <think> b", "<think> a </think> then <think> b"),
    ("", "<think>"),
])
def test_join_prefill(completion, expected):
    assert join_prefill(completion, "<think>") == expected
    assert join_prefill(completion, "") == completion


def test_step_by_step_exploit_is_rewarded_with_prefill():
    """With the prompt pre-filled, reasoning written before the model's own <think> is scored as the
    paper's lenient check scored it: valid format, flagged reasoning_before_think."""
    comp = "Step 1: the patient has fever. Step 2: rash suggests measles. <think>ok</think><answer>B</answer>"
    r = score(join_prefill(comp), "B", 4)
    assert r.reward == 1.0 and r.format_ok and "reasoning_before_think" in r.flags
    assert score("<think>" + comp, "B", 4).reward == -1.0  # naive concatenation would call it a format failure


# --------------------------------------------------------------------------- template echo


@pytest.mark.parametrize(
    "response, echo",
    [
        ("<think> reasoning process here </think> <answer> answer here </answer>", True),  # the demo collapse
        ("<think>Reasoning process here.</think><answer>C</answer>", True),        # placeholder in think
        ("<think>Aspirin inhibits COX-1.</think><answer>Answer here!</answer>", True),  # placeholder in answer
        ("<think>reasoning proces here</think><answer>C</answer>", True),           # near copy (typo)
        ("<think>The assistant first thinks about the reasoning process in the mind and then provides the "
         "user with the answer.</think><answer>B</answer>", True),                   # a system sentence
        ("<think>Answer with just one of the letters from the options below.</think><answer>B</answer>", True),
        ("<think>Aspirin inhibits COX-1 irreversibly.</think><answer>C</answer>", False),
        ("<think>The reasoning here is that aspirin blocks platelets.</think><answer>C</answer>", False),
        ("<think>Low platelets and fever.</think><answer>answer</answer>", False),  # one word: not an echo
        ("<think>reasoning process here", False),                                   # unclosed: not checked
    ],
)
def test_template_echo_flag(response, echo):
    r = score(response, "C", 4, scheme="paper")
    assert ("template_echo" in r.flags) == echo


def test_template_echo_scoring_by_scheme():
    echo = "<think> reasoning process here </think> <answer> C </answer>"
    paper = score(echo, "C", 4, scheme="paper")
    assert (paper.reward, paper.format_ok) == (1.0, True)  # the paper's verdict is kept
    for scheme in ("shaped", "composite"):
        r = score(echo, "C", 4, scheme=scheme)
        assert (r.reward, r.format_ok, r.correct) == (-1.0, False, False), scheme
    cfg = RewardConfig(echo_reward=-0.5, no_letter_reward=-0.3)
    assert score(echo, "C", 4, scheme="shaped", config=cfg).reward == -0.5
    assert score("<think>Aspirin blocks COX.</think><answer>not sure</answer>", "C", 4, scheme="shaped",
                 config=cfg).reward == -0.3
    assert verl_compute_score("x", " reasoning process here </think><answer>C</answer>", "C")["template_echo"]


def test_shaped_format_step_sets_the_bad_format_band():
    """``format_step_reward``: -1 + step per tag reached in order (at most 3), the valid rewards unchanged."""
    cases = [("<think> no close at all", 0), ("<think> x </think> no answer", 1),
             ("<think> x </think> <answer> C", 2), ("<think> x </think> <answer> C </answer>", None)]
    for step in (0.25, 0.1, 0.0):
        cfg = RewardConfig(format_step_reward=step, no_letter_reward=-0.5)
        for text, tags in cases:
            r = score(text, "C", 4, scheme="shaped", config=cfg)
            assert r.reward == pytest.approx(1.0 if tags is None else -1.0 + step * tags), (step, text)
        assert score("<think> x </think> <answer> none </answer>", "C", 4, scheme="shaped",
                     config=cfg).reward == -0.5


def test_template_texts_match_the_prompts():
    """reward.py keeps its own copy of the prompts' fixed texts (to stay importable alone): they must
    be the prompts' sentences."""
    from medrlvr import prompts
    from medrlvr.reward import TEMPLATE_PLACEHOLDERS, TEMPLATE_TEXTS

    fixed = prompts.R1_ZERO_SYSTEM + " " + prompts.INSTRUCTION + " " + prompts.DIRECT_HEADER
    for t in TEMPLATE_TEXTS:
        assert t in fixed, t
    for ph in TEMPLATE_PLACEHOLDERS:
        assert f"> {ph} <" in prompts.R1_ZERO_SYSTEM


def test_score_of_a_completion_of_the_default_prompt():
    """The default prompt ends with a pre-filled <think>: its completion scores as the whole response does, by
    default; prefill=None scores the text as given (a prompt without pre-fill)."""
    completion = "Aspirin blocks COX-1.</think><answer>C</answer>"
    whole = "<think>" + completion
    assert score(completion, "C", 4).reward == 1.0 == score(whole, "C", 4).reward
    assert score(completion, "C", 4).flags == score(whole, "C", 4).flags == []
    r = score(completion, "C", 4, prefill=None)
    assert r.reward == -1.0 and not r.format_ok
