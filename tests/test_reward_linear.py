"""Reward parsing in linear time.

Adversarial texts of 256k characters (whitespace, newline and tab runs after cue words, repeated cues,
letter and tag soup, unclosed tags) are scored under every scheme and the *result* is checked. Before the
fix the cue pattern backtracked quadratically over whitespace runs ("answer" + 32k spaces took 16 s, 1 MB
never finished), so the generous ``timeout`` below is a hang guard, not a timing: timings are in
``bench/reward_fuzz.py``. The old cue pattern is kept here as a reference to show the rewrite reads the
same letters on ordinary (short) text.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medrlvr.integrations.trl import trl_reward_func
from medrlvr.integrations.verl import compute_score as verl_compute_score
from medrlvr.reward import SCHEMES, extract_letter, score
from medrlvr.reward import flags as RF, letters as RL

N = 256 * 1024

# (family, response, expected pred, expected paper reward) -- gold is "C", 4 options.
CASES = [
    ("spaces after answer cue", "<think>r</think><answer>answer" + " " * N + "1</answer>", None, 0.0),
    ("spaces then a letter", "<think>r</think><answer>answer" + " " * N + "C</answer>", "C", 1.0),
    ("newlines after Answer in think", "<think>Answer" + "\n" * N + "1</think><answer>C</answer>", "C", 1.0),
    ("tabs after 'Answer is' in think", "<think>Answer is" + "\t" * N + "1</think><answer>B</answer>", "B", 0.0),
    ("separator inside the run", "<think>r</think><answer>option" + " " * N + ":" + " " * N + "(c)</answer>",
     "C", 1.0),
    ("repeated cues", "<think>r</think><answer>" + "answer is " * (N // 10) + "</answer>", None, 0.0),
    ("repeated cues with runs", "<think>r</think><answer>" + ("answer" + " " * 64) * (N // 70 + 1) + "</answer>",
     None, 0.0),
    ("letter soup", "<think>r</think><answer>" + "A B. (C) " * (N // 9) + "</answer>", "C", 1.0),
    ("tag soup", "<think><answer></think></answer>" * (N // 32), None, -1.0),
    ("unclosed tags", "<think>" + "x " * (N // 2) + "<answer>" + " " * N, None, -1.0),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family,text,pred,paper", CASES, ids=[c[0] for c in CASES])
def test_adversarial_256k_is_scored(family, text, pred, paper):
    assert len(text) >= N
    for scheme in SCHEMES:
        r = score(text, "C", 4, scheme=scheme)
        assert r.pred == pred, (family, scheme)
        assert -1.0 <= r.reward <= 1.0
        if scheme == "paper":
            assert r.reward == paper


@pytest.mark.timeout(120)
def test_adapters_score_long_text():
    text = "r</think><answer>answer" + " " * N + "1, so C</answer>"
    assert trl_reward_func(prompts=None, completions=[text], gold="C", n_options=4) == [1.0]
    out = verl_compute_score("medqa", text, "C", {"n_options": 4})
    assert out["score"] == 1.0 and out["pred"] == "C"


# The cue pattern as it was before the rewrite (quadratic on whitespace runs): same language.
_OLD_CUE = (
    r"(?i:\b(?:answer|option|choice)\b"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?)\s*[:=\-]?\s*"
)
_OLD_CUE_RE = re.compile(
    _OLD_CUE + r"(?:[(\[{]\s*([A-Za-z])\s*[)\]}]|([A-Z])" + RL._END + r"|([a-z])(?=[\s.!)\]}]*$))"
)
_PIECES = ["answer", "Answer", "option", "choice", " is", " would be", " must  be", ":", "=", "-", " ", "  ",
           "\n", "\t", "(", ")", "[c]", "C", "c", "B", "x", ".", "E. coli", "I think", "1"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join))
def test_cue_rewrite_reads_the_same_letters(s):
    old = [(m.span(), m.groups()) for m in _OLD_CUE_RE.finditer(s)]
    new = [(m.span(), m.groups()) for m in RL._CUE_RE.finditer(s)]
    assert new == old
    assert extract_letter(s, 4) == extract_letter(s, 4)  # deterministic


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=60))
def test_non_space_len_counts_non_space_characters(s):
    assert RF._non_space_len(s) == sum(1 for ch in s if not ch.isspace())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=60))
def test_norm_text_matches_the_substitute_and_split_form(s):
    import unicodedata

    old = " ".join(RL._NONWORD_RE.sub(" ", unicodedata.normalize("NFKC", s).casefold()).split())
    assert RL.norm_text(s) == old
