"""Tests of medrlvr.analysis.stages: the stage classifier against hand labels, and its features.

The fixture ``tests/fixtures/stage_labels.jsonl`` holds hand-written, hand-labelled completions
(medical multiple-choice questions; ``response`` includes the pre-filled ``<think>``).  Run
with ``-s`` to see the confusion matrix.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrlvr.analysis import stages as S
from medrlvr.analysis.stages import (
    STAGES,
    StageConfig,
    classify,
    classify_samples,
    features,
    hacking_rates,
    sample_features,
    segments,
    stage_distribution,
)
from medrlvr.reward import FLAGS, score

FIXTURE = Path(__file__).parent / "fixtures" / "stage_labels.jsonl"
PAPER_STAGES = STAGES[:6]
OPTS = {
    "A": "Streptococcus pneumoniae",
    "B": "Neisseria meningitidis",
    "C": "Listeria monocytogenes",
    "D": "Haemophilus influenzae",
}


def load_fixture() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def confusion(rows: list[dict], preds: list[str]) -> str:
    labels = [s for s in STAGES if any(r["label"] == s or p == s for r, p in zip(rows, preds))]
    short = {s: s.split("_")[0][:8] for s in labels}
    c = Counter((r["label"], p) for r, p in zip(rows, preds))
    w = max(len(s) for s in labels)
    head = " " * (w + 2) + " ".join(f"{short[s]:>8}" for s in labels) + "   (rows: label, columns: predicted)"
    lines = [head]
    for a in labels:
        lines.append(f"{a:<{w}}  " + " ".join(f"{c[(a, b)]:>8}" for b in labels))
    return "\n".join(lines)


# --------------------------------------------------------------------------- fixture


def test_fixture_is_well_formed():
    rows = load_fixture()
    assert len(rows) >= 60
    for r in rows:
        assert set(r) >= {"response", "gold", "n_options", "options", "label", "note"}
        assert r["label"] in STAGES
        assert isinstance(r["response"], str) and isinstance(r["note"], str) and r["note"]
        assert r["gold"] in r["options"] and len(r["options"]) == r["n_options"]
    counts = Counter(r["label"] for r in rows)
    for stage in PAPER_STAGES:
        assert counts[stage] >= 6, f"fewer than 6 examples of {stage}: {counts}"


def test_classifier_agrees_with_hand_labels():
    rows = load_fixture()
    preds = [classify(r["response"], r["gold"], r["n_options"], r["options"]) for r in rows]
    agree = sum(p == r["label"] for r, p in zip(rows, preds)) / len(rows)
    print(f"\nstage classifier vs {len(rows)} hand labels: agreement {agree:.1%}")
    print(confusion(rows, preds))
    for r, p in zip(rows, preds):
        if p != r["label"]:
            print(f"  disagreement: label={r['label']} predicted={p} ({r['note']})")
    assert agree >= 0.90


def test_flags_match_reward_module_on_fixture():
    """Without a re-opened think, the features' flags are exactly the reward module's."""
    for r in load_fixture():
        f = features(r["response"], r["gold"], r["n_options"], r["options"])
        if f["reopened_think"]:
            continue
        res = score(r["response"], r["gold"], r["n_options"], options=r["options"])
        assert f["flags"] == res.flags, r["note"]
        assert f["format_ok"] == res.format_ok, r["note"]
        assert f["pred"] == res.pred, r["note"]


# --------------------------------------------------------------------------- features


def test_features_lengths_whitespace_tokens():
    f = features("<think>fever and neck stiffness</think><answer>B</answer>")
    assert f["format_ok"] and f["lenient_format_ok"] and not f["reopened_think"]
    assert f["think_chars"] == len("fever and neck stiffness")
    assert f["think_nonspace_chars"] == len("feverandneckstiffness")
    assert f["think_tokens"] == 4 and f["think_words"] == 4
    assert f["answer_chars"] == 1 and f["answer_words"] == 1
    assert f["before_think_chars"] == 0 and f["after_answer_chars"] == 0
    assert f["pred"] == "B"
    assert f["response_tokens"] == 4  # whitespace tokens of the whole response


def test_features_with_tokenizer():
    class CharTok:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    f = features("<think>abc de</think><answer>C</answer>", tokenizer=CharTok())
    assert f["think_tokens"] == 6
    assert f["answer_tokens"] == 1


def test_features_cjk_word_count():
    f = features("<think>髄膜炎</think><answer>C</answer>")
    assert f["think_words"] == 3
    assert f["think_tokens"] == 1  # whitespace tokens


def test_features_format_variants():
    assert not features("")["format_ok"]
    assert not features("<think>x</think><answer> </answer>")["format_ok"]
    assert not features("<think>x</think><ANSWER>A</ANSWER>")["format_ok"]
    f = features("<think>a<think>b</think>c</think><answer>A</answer>")
    assert f["reopened_think"] and not f["lenient_format_ok"]
    assert "multiple_blocks" in f["flags"]


def test_features_reopened_prefill_preamble():
    r = "<think>Step 1: neonate with meningitis.\nStep 2: gram-positive rods.\n<think>So C.</think><answer>C</answer>"
    f = features(r, "C", 4, OPTS)
    assert f["reopened_think"] and not f["format_ok"] and f["lenient_format_ok"]
    assert f["before_think_words"] == 9
    assert f["markers_before_think"] == 2 and f["markers_think"] == 0
    assert f["marker_location"] == "before_think"
    assert {"reasoning_before_think", "multiple_blocks"} <= set(f["flags"])
    assert classify(r, "C", 4, OPTS) == "step_by_step_exploit"
    # the reward module itself scores this as a format failure
    assert score(r, "C", 4).reward == -1.0


def test_features_no_prefill_preamble():
    r = "Step 1: RCA occlusion. Step 2: leads II, III, aVF. <think>So C.</think><answer>C</answer>"
    f = features(r, "C", 4)
    assert f["format_ok"] and not f["reopened_think"]
    assert f["before_think_chars"] > 20 and f["markers_before_think"] == 2
    assert "reasoning_before_think" in f["flags"]
    assert classify(r, "C", 4) == "step_by_step_exploit"


def test_features_answer_revealed_by_letter_and_position():
    f = features("<think>The answer is C. Listeria is a gram-positive rod.</think><answer>C</answer>", "C", 4, OPTS)
    assert f["answer_letter_in_think"] and f["reveal_word_index"] == 1  # position of "answer"
    assert not f["answer_text_in_think"]  # "Listeria" alone is not the option text
    late_r = (
        "<think>Step 1: neonate. Step 2: gram-positive rod with tumbling motility, from unpasteurized dairy. "
        "Step 3: pneumococcus is a coccus, the others are gram-negative. So the answer is C.</think><answer>C</answer>"
    )
    late = features(late_r, "C", 4, OPTS)
    assert late["answer_letter_in_think"] and late["reveal_word_index"] > 20
    # a letter stated at the end of real reasoning is not a give-away
    assert classify(late_r, "C", 4, OPTS) == "reintegrated_reasoning"


def test_features_answer_revealed_by_option_text():
    f = features("<think>Listeria monocytogenes.</think><answer>C</answer>", "C", 4, OPTS)
    assert f["answer_text_in_think"] and f["answer_in_think"] and not f["answer_letter_in_think"]
    assert f["reveal_text_extra_words"] == 0
    # option text without the options given cannot be detected
    assert not features("<think>Listeria monocytogenes.</think><answer>C</answer>", "C", 4)["answer_text_in_think"]


def test_features_article_and_abbreviation_are_not_letters():
    f = features("<think>A 3-day-old with E. coli sepsis.</think><answer>A</answer>", "A", 5)
    assert not f["answer_letter_in_think"]
    f = features("<think>E. coli is a gram-negative rod.</think><answer>E</answer>", "E", 5)
    assert not f["answer_letter_in_think"]


def test_features_markers_by_section():
    f = features("<think>First, fever. Second, rash.</think><answer>1. A\n2. because</answer>")
    assert f["markers_think"] == 2 and f["markers_answer"] == 2 and f["markers_before_think"] == 0
    assert f["marker_location"] == "think"
    f = features("<think>- fever\n- rash\n(1) x\nＳｔｅｐ ３: y and (2) z</think><answer>A</answer>")
    assert f["markers_think"] == 5
    assert features("<think>pH 7.4 and 1.5 mg</think><answer>A</answer>")["markers_think"] == 0
    assert features("<think>Let me solve this step by step.</think><answer>A</answer>")["marker_location"] is None


def test_features_repetition():
    rep = features("<think>" + "the patient has a fever " * 30 + "</think><answer>A</answer>")
    assert rep["repetition"] > 0.9
    uniq = features("<think>" + " ".join(f"w{i}" for i in range(50)) + "</think><answer>A</answer>")
    assert uniq["repetition"] == 0.0
    assert features("<think>short</think><answer>A</answer>")["repetition"] == 0.0
    assert S.repetition("a b c d a b c d", 4) == pytest.approx(1 - 4 / 5)


def test_features_unclosed_think_is_measured():
    f = features("<think>one two three")
    assert not f["format_ok"] and f["think_words"] == 3
    assert classify("<think>one two three") == "format_failure"


def test_features_non_string_and_odd_arguments():
    f = features(None, gold="Z", n_options="x", options=["a", "b"])  # type: ignore[arg-type]
    assert not f["format_ok"] and f["response_chars"] == 0
    assert classify(None) == "format_failure"  # type: ignore[arg-type]
    assert (
        classify("<think>The answer is B</think><answer>B</answer>", options=["x", "y", "z"]) == "direct_answer_hacker"
    )


# --------------------------------------------------------------------------- rules and config


@pytest.mark.parametrize(
    "response,stage",
    [
        ("<think>The answer is C.</think><answer>C</answer>", "direct_answer_hacker"),
        ("<think></think><answer>C</answer>", "direct_answer_hacker"),
        ("<think>🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂</think><answer>C</answer>", "other"),
        (
            "<think>Neonate with meningitis and gram-positive rods in the CSF.</think><answer>C</answer>",
            "concise_structurer",
        ),
        ("<think>" + "Listeria is likely. " * 60 + "</think><answer>C</answer>", "verbose_formatter"),
        (
            (
                "<think>Step 1: a neonate with fever and a bulging fontanelle.\nStep 2: gram-positive rods in the CSF.\n"
                "Step 3: tumbling motility and dairy exposure.</think><answer>C</answer>"
            ),
            "reintegrated_reasoning",
        ),
        ("<think>Short.</think><answer>C</answer>" + " extra words" * 20, "other"),
        ("<think>x</think>", "format_failure"),
    ],
)
def test_rules(response, stage):
    assert classify(response, "C", 4, OPTS) == stage


def test_config_changes_thresholds():
    r = "<think>Neonate with meningitis and gram-positive rods in the CSF.</think><answer>C</answer>"
    assert classify(r, "C", 4) == "concise_structurer"
    assert classify(r, "C", 4, config=StageConfig(verbose_min_words=5)) == "verbose_formatter"
    assert classify("<think></think><answer>C</answer>", config=StageConfig(empty_think_stage="other")) == "other"
    with pytest.raises(ValueError):
        StageConfig(empty_think_stage="nope")
    with pytest.raises(ValueError):
        StageConfig.from_dict({"verbose_min_word": 3})
    assert StageConfig.from_dict({"verbose_min_words": 3}).verbose_min_words == 3


def test_classify_accepts_precomputed_features():
    r = "<think>The answer is C.</think><answer>C</answer>"
    f = features(r, "C", 4)
    assert classify("ignored", feats=f) == "direct_answer_hacker"


_TAGS = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "Step 1:", "C", "The answer is B.", " ", "\n", "é", "髄", "🙂"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_TAGS, st.text(max_size=12)), max_size=16), st.sampled_from([None, "A", "C", "Z"]))
def test_never_raises_and_segments_roundtrip(parts, gold):
    text = "".join(parts)
    f = features(text, gold, 4, OPTS)
    assert set(f["flags"]) <= set(FLAGS)
    assert classify(text, gold, 4, OPTS) in STAGES
    segs = segments(text)
    assert "".join(s for _, s in segs) == text
    assert all(s for _, s in segs)
    assert {k for k, _ in segs} <= {"before", "tag", "think", "between", "answer", "after", "unparsed"}


def test_segments_kinds():
    segs = segments("pre<think>t</think> <answer>C</answer>post")
    assert segs == [
        ("before", "pre"),
        ("tag", "<think>"),
        ("think", "t"),
        ("tag", "</think>"),
        ("between", " "),
        ("tag", "<answer>"),
        ("answer", "C"),
        ("tag", "</answer>"),
        ("after", "post"),
    ]
    segs = segments("<think>Step 1: x<think>y</think><answer>C</answer>")
    assert segs[0] == ("before", "<think>Step 1: x") and segs[2] == ("think", "y")
    assert segments("<think>unclosed")[-1] == ("unparsed", "unclosed")


# --------------------------------------------------------------------------- per-step aggregates


def _sample(step, response, **kw):
    d = {"step": step, "response": response, "gold": "C", "n_options": 4, "options": OPTS}
    d.update(kw)
    return d


def test_stage_distribution():
    samples = [
        _sample(2, "<think>The answer is C.</think><answer>C</answer>"),
        _sample(1, ""),
        _sample(1, "<think>Neonate with meningitis and gram-positive rods in the CSF.</think><answer>C</answer>"),
        _sample(2, "<think>C</think><answer>C</answer>"),
        _sample(1, "<think>x"),
        {"response": "<think>x"},  # no step
    ]
    d = stage_distribution(samples)
    assert list(d) == [-1, 1, 2]
    for fr in d.values():
        assert set(fr) == set(STAGES)
        assert sum(fr.values()) == pytest.approx(1.0)
    assert d[1]["format_failure"] == pytest.approx(2 / 3)
    assert d[1]["concise_structurer"] == pytest.approx(1 / 3)
    assert d[2]["direct_answer_hacker"] == 1.0
    assert stage_distribution([]) == {}
    stages = classify_samples(samples)
    assert stage_distribution(samples, stages=stages) == d
    with pytest.raises(ValueError):
        stage_distribution(samples, stages=stages[:-1])


def test_stage_distribution_uses_completion_when_no_response():
    d = stage_distribution([{"step": 0, "completion": "The answer is C.</think><answer>C</answer>", "gold": "C"}])
    assert d[0]["direct_answer_hacker"] == 1.0


def test_hacking_rates():
    samples = [
        _sample(0, "<think>The answer is C.</think><answer>C</answer>"),
        _sample(0, "<think>Neonate, gram-positive rods.</think><answer>C</answer>\nmore"),
        _sample(1, "<think>Step 1: neonate with meningitis.\nStep 2: rods.\n<think></think><answer>C</answer>"),
        _sample(1, "<think>a</think><answer>C</answer><answer>D</answer>"),
        {"step": 1, "flags": ["trailing_text", "bogus", 3]},  # no text: recorded flags are used
    ]
    h = hacking_rates(samples)
    assert list(h) == [0, 1]
    assert all(set(v) == set(FLAGS) for v in h.values())
    assert h[0]["answer_in_think"] == 0.5
    assert h[0]["trailing_text"] == 0.5
    assert h[0]["reasoning_before_think"] == 0.0
    assert h[1]["reasoning_before_think"] == pytest.approx(1 / 3)  # re-opened pre-fill counts
    assert h[1]["multiple_blocks"] == pytest.approx(2 / 3)
    assert h[1]["empty_think"] == pytest.approx(2 / 3)
    assert h[1]["trailing_text"] == pytest.approx(2 / 3)  # recorded flag + the second <answer> block
    assert hacking_rates([]) == {}


def test_precomputed_features_give_the_same_results():
    rows = load_fixture()
    samples = [dict(r, step=i % 3) for i, r in enumerate(rows)]
    feats = sample_features(samples)
    assert classify_samples(samples, feats=feats) == classify_samples(samples)
    assert hacking_rates(samples, feats=feats) == hacking_rates(samples)
    with pytest.raises(ValueError):
        hacking_rates(samples, feats=feats[:-1])
    with pytest.raises(ValueError):
        classify_samples(samples, feats=feats[:-1])


def test_letter_distribution_shows_a_position_hack():
    from medrlvr.analysis import letter_distribution

    rows = []
    golds = "ABCD" * 2
    for g in golds:                        # step 1: answers spread like the golds
        rows.append({"step": 1, "pred": g, "gold": g})
    for g in golds:                        # step 2: always D, whatever the gold
        rows.append({"step": 2, "pred": "D", "gold": g})
    rows.append({"step": 2, "pred": None, "gold": "A"})                  # no letter: counted in n only
    rows.append({"step": 3, "response": "<think>so C</think><answer>C</answer>", "gold": "B", "n_options": 4})
    rows.append({"step": 3, "response": "<think>no format", "gold": "A", "n_options": 4})
    d = letter_distribution(rows, sample_features(rows))
    assert list(d) == [1, 2, 3]
    assert d[1]["answered"] == 8 and d[1]["pred"] == {L: 0.25 for L in "ABCD"} and d[1]["top"] == "A"
    assert d[1]["top_share"] == 0.25 and d[1]["gold_top_share"] == 0.25
    assert d[2]["n"] == 9 and d[2]["answered"] == 8 and d[2]["pred"] == {"D": 1.0}
    assert d[2]["top"] == "D" and d[2]["top_share"] == 1.0 and d[2]["gold_top_share"] == 0.25
    assert d[2]["gold"] == {L: 0.25 for L in "ABCD"}
    # no recorded pred: the letter parsed from the well-formed response; the malformed one has none
    assert d[3]["n"] == 2 and d[3]["answered"] == 1 and d[3]["pred"] == {"C": 1.0} and d[3]["gold_top_share"] == 0.0
    # without features only recorded preds count
    assert letter_distribution(rows)[3]["answered"] == 0
    with pytest.raises(ValueError):
        letter_distribution(rows, sample_features(rows)[:2])


def test_template_echo_stage():
    from medrlvr.analysis.stages import STAGES, classify

    assert "template_echo" in STAGES
    assert classify("<think> reasoning process here </think> <answer> answer here </answer>", "C", 4) == "template_echo"
    assert classify("<think> reasoning process here </think> <answer> C </answer>", "C", 4) == "template_echo"
    assert classify("<think>Aspirin blocks COX-1 in platelets.</think><answer>C</answer>", "C", 4) == "concise_structurer"
    assert classify("<think> reasoning process here </think>", "C", 4) == "format_failure"


def test_classify_a_completion_of_the_default_prompt():
    """A completion after the default prompt's pre-filled <think> classifies as its whole response does."""
    completion = "The drug blocks COX-1, so the answer is C.</think><answer>C</answer>"
    assert classify(completion, "C", 4) == classify("<think>" + completion, "C", 4) != "format_failure"
    assert classify(completion, "C", 4, prefill=None) == "format_failure"
