import pytest

from medrlvr.data import make_mcq
from medrlvr.prompts import INSTRUCTION, R1_ZERO_SYSTEM, render, response_prefix

REC = make_mcq("q", "Which drug?", ["Aspirin", "Heparin", "Warfarin"], "B")


def test_r1_zero_template():
    p = render(REC, "r1-zero")
    assert p.startswith(R1_ZERO_SYSTEM + " User: Which drug?")
    assert INSTRUCTION in p and "\nA. Aspirin\nB. Heparin\nC. Warfarin" in p
    assert p.endswith("Assistant: <think>")
    assert render(REC, "r1-zero", prefill_think=False).endswith("Assistant:")
    assert response_prefix("r1-zero") == "<think>" and response_prefix("direct") == ""


def test_many_options_and_context():
    r = make_mcq("q", "Q?", [f"opt{i}" for i in range(10)], "J", context="Abstract text.")
    p = render(r, "r1-zero")
    assert "J. opt9" in p and p.index("Context: Abstract text.") < p.index("Q?")
    d = render(r, "direct")
    assert d.endswith("Answer:") and "J. opt9" in d and "Context: Abstract text." in d


def test_chat_template(tokenizer):
    p = render(REC, "chat", tokenizer)
    assert "<|im_start|>system" in p and p.endswith("<think>") and "Which drug?" in p
    with pytest.raises(ValueError, match="tokenizer"):
        render(REC, "chat", None)
    with pytest.raises(ValueError, match="unknown template"):
        render(REC, "nope")
