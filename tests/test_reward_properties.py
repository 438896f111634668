"""Property tests for medrlvr.reward: never raises, deterministic, bounded, in range."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrlvr.reward import (
    FLAGS,
    LETTERS,
    extract_letter,
    parse,
    score,
)
from medrlvr.integrations.trl import trl_reward_func
from medrlvr.integrations.verl import compute_score as verl_compute_score

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>",
    "<THINK>", "< think >", "<answer >", "</ANSWER>", "<", ">", "/",
    "A", "B", "C", "I", "a", "c", "(C)", "C.", "C)", "[B]", "**D**", "E. coli",
    "The answer is ", "answer: ", "option ", "I think ", " or ", ", ",
    "Aspirin", "heparin", "Ｃ", "é", "发烧", "🤒", "\u200b", "\x00",
    " ", "\n", "\t", "reasoning about the case. ",
]

tag_soup = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=30
).map("".join)
any_text = st.one_of(st.text(), tag_soup)


@st.composite
def question(draw):
    n = draw(st.integers(min_value=2, max_value=26))
    gold = draw(st.sampled_from(LETTERS[:n]))
    with_opts = draw(st.booleans())
    options = None
    if with_opts:
        options = {
            L: draw(st.one_of(st.sampled_from(["Aspirin", "Heparin", "E. coli", "aspirin and heparin", ""]),
                              st.text(max_size=12)))
            for L in LETTERS[:n]
        }
    return n, gold, options


@SETTINGS
@given(any_text)
def test_parse_never_raises_and_is_consistent(text):
    p = parse(text)
    assert p.text == text
    assert p.n_think_blocks == text.count("<think>")
    assert p.n_answer_blocks == text.count("<answer>")
    if p.tags_in_order:
        assert p.think is not None and p.answer is not None
        assert p.n_think_blocks == p.n_answer_blocks == 1
    assert parse(text) == p


@SETTINGS
@given(any_text, question())
def test_paper_score_properties(text, q):
    n, gold, options = q
    r = score(text, gold, n, options=options)
    assert r.reward in (-1.0, 0.0, 1.0)
    assert r.pred is None or r.pred in LETTERS[:n]
    assert r.format_ok == (r.reward != -1.0)
    assert r.correct == (r.reward == 1.0)
    assert all(f in FLAGS for f in r.flags)
    assert r.flags == [f for f in FLAGS if f in r.flags]
    # deterministic
    assert score(text, gold, n, options=options) == r


@SETTINGS
@given(any_text, question())
def test_other_schemes_bounded(text, q):
    n, gold, options = q
    paper = score(text, gold, n, options=options)
    strict = score(text, gold, n, scheme="strict", options=options)
    comp = score(text, gold, n, scheme="composite", options=options)
    assert strict.reward in (-1.0, 0.0, 1.0)
    assert not strict.format_ok or paper.format_ok
    assert strict.reward <= paper.reward
    assert -1.0 <= comp.reward <= paper.reward
    assert comp.format_ok == paper.format_ok


@SETTINGS
@given(any_text, st.integers(min_value=2, max_value=26))
def test_extract_letter_in_range(text, n):
    pred = extract_letter(text, n)
    assert pred is None or pred in LETTERS[:n]
    assert extract_letter(text, n) == pred


@SETTINGS
@given(st.sampled_from(list(LETTERS)), st.integers(min_value=2, max_value=26),
       st.sampled_from(["{}", "({})", "{}.", "**{}**", "The answer is {}", "{}) text", "  {}\n"]))
def test_well_formed_letter_round_trip(letter, n, template):
    resp = "<think>Some careful clinical reasoning.</think><answer>" + template.format(letter) + "</answer>"
    gold = LETTERS[min(LETTERS.index(letter), n - 1)]
    r = score(resp, gold, n)
    in_range = letter in LETTERS[:n]
    assert r.format_ok
    assert r.pred == (letter if in_range else None)
    assert r.reward == (1.0 if in_range and letter == gold else 0.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=4), st.data())
def test_adapters_never_raise(texts, data):
    n = data.draw(st.integers(min_value=2, max_value=26))
    golds = [data.draw(st.sampled_from(LETTERS[:n])) for _ in texts]
    out = trl_reward_func(None, texts, golds, [n] * len(texts))
    assert len(out) == len(texts) and all(x in (-1.0, 0.0, 1.0) for x in out)
    conv = [[{"role": "assistant", "content": t}] for t in texts]
    assert trl_reward_func(None, conv, golds, [n] * len(texts)) == out
    v = verl_compute_score("d", texts[0], golds[0], {"n_options": n})
    assert v["score"] == out[0]
    assert isinstance(v["pred"], str)


def _echo_reference(text: str, cfg) -> bool:
    """``template_echo`` by its definition alone: no length pre-filter, no difflib short-cuts."""
    import difflib

    from medrlvr.reward.flags import template_parts as _norm_parts
    from medrlvr.reward.letters import norm_text as _norm_text

    t = _norm_text(text)
    if not t:
        return False
    for p in _norm_parts(cfg.template_texts):
        if t == p or (len(t.split()) >= cfg.template_echo_min_words and f" {t} " in f" {p} "):
            return True
        if difflib.SequenceMatcher(None, t, p, autojunk=False).ratio() >= cfg.template_echo_similarity:
            return True
    return False


_ECHO_PIECES = list(__import__("medrlvr.reward", fromlist=["TEMPLATE_TEXTS"]).TEMPLATE_TEXTS) + [
    "ＡＮＳＷＥＲ ＨＥＲＥ", "\ufb01nal answer here", "reasoning process here " * 3, "x" * 150, "É", "ß",
]


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(_ECHO_PIECES), st.sampled_from(FRAGMENTS), st.text(max_size=12)),
                max_size=6).map("".join),
       st.sampled_from([0.5, 0.8, 0.95]))
def test_template_echo_prefilter_keeps_the_verdict(text, thr):
    """The echo check's pre-filters (ASCII-alnum length bound, real_quick_ratio before difflib) never
    change its verdict."""
    from medrlvr.reward import RewardConfig
    from medrlvr.reward.flags import echoes_template as _echo_of

    cfg = RewardConfig(template_echo_similarity=thr)
    assert _echo_of(text, cfg) == _echo_reference(text, cfg)
