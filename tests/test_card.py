"""Model cards (medrlvr.card): the card a tiny RL run and a tiny SFT run write into ``final/`` parses with
``huggingface_hub.ModelCard.load`` (its metadata validated by ``ModelCardData``, as the Hub's loader does), its
``model-index`` results equal the run's ``results.json``, and ``medrlvr card RUN_DIR`` rewrites it."""

import json

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from medrlvr import card
from medrlvr.cli import main
from medrlvr.train.config import build_config


def _check_against_results(c: ModelCard, results: dict, source: str):
    benches = [b for b in results if not b.startswith("_")]
    ours = [e for e in c.data.eval_results if e.metric_args["source"] == source]
    assert [e.dataset_name for e in ours] == benches
    for e, b in zip(ours, benches):
        r = results[b]
        assert e.metric_type == "accuracy" and e.metric_value == r["accuracy"]
        assert e.metric_args["n"] == r["n"] and e.metric_args["ci95"] == r["ci95"]
        if "random_baseline" in r:
            assert e.metric_args["random_baseline"] == r["random_baseline"]["accuracy"]


def test_rl_run_card_parses_and_matches_results(tmp_path, one_thread):
    from medrlvr.train.trainer import Trainer

    cfg = build_config("tiny", {"max_steps": 2, "eval_limit": 4, "max_new_tokens": 8, "prompts_per_step": 2,
                                "samples_per_prompt": 2, "report_to": []})
    run = tmp_path / "tiny-run"
    Trainer(cfg, run, quiet=True).train()
    path = run / "final" / "README.md"
    c = ModelCard.load(path)                                 # parses the front matter and its model-index
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["starter:test"]["n"] == 4 and "random_baseline" in results["starter:test"]
    _check_against_results(c, results, "eval/results.json")
    d = c.data
    assert {"medrlvr", "rlvr", "medical", "grpo"} <= set(d.tags) and d.library_name == "transformers"
    assert d.base_model is None and d.license is None        # tiny: random weights, no base, no license to inherit
    assert d.datasets == ["starter:train", "starter:test"] and d.model_name == "tiny-run"
    # ModelCardData's own validation of the model-index (a name and well-formed results) passes on a round trip
    again = ModelCardData(**d.to_dict())
    assert [(e.dataset_name, e.metric_value) for e in again.eval_results] == \
           [(e.dataset_name, e.metric_value) for e in d.eval_results]
    text = c.text
    for part in ("## Training recipe", "## Evaluation", "## Monitors", "## Limitations", "| algorithm | grpo",
                 "| steps | 2 of 2 |", "no alert was raised", "hardware"):
        assert part in text, part
    # medrlvr card RUN_DIR rewrites it (here after an evaluation of final/ was added) and names the new results
    extra = {"_meta": {"mode": "loglik"}, "medqa-4opt:test": {"accuracy": 0.25, "ci95": [0.2, 0.3], "n": 50,
                                                               "random_baseline": {"accuracy": 0.25, "ci95": [0.14, 0.36]}}}
    (run / "final" / "eval").mkdir()
    (run / "final" / "eval" / "results.json").write_text(json.dumps(extra))
    path.unlink()
    assert main(["card", str(run)]) == 0
    c2 = ModelCard.load(path)
    _check_against_results(c2, results, "eval/results.json")
    _check_against_results(c2, extra, "final/eval/results.json")


def test_sft_card_inherits_the_embedded_base_license(tmp_path, monkeypatch):
    """The card's base model and license come from the run's model: the embedded SmolLM2 is Apache-2.0; the SFT
    run itself trains the tiny model (fast), its config then names the embedded alias, as a real SFT run would."""
    from medrlvr.sft import SFTConfig, sft
    from medrlvr.data import load_benchmark

    recs = load_benchmark("starter:train").records[:12]
    out = tmp_path / "sft"
    sft(SFTConfig(model="tiny", train_data=recs, dev_data=recs[:4], max_steps=2, batch_size=4, lr=1e-3,
                  eval_every_epoch=False, report_to=()), out, quiet=True)
    c = ModelCard.load(out / "final" / "README.md")
    results = json.loads((out / "eval" / "results.json").read_text())
    _check_against_results(c, results, "eval/results.json")
    assert results[next(b for b in results if not b.startswith("_"))]["ci95"][0] is not None
    assert {"medrlvr", "sft", "medical"} <= set(c.data.tags) and "supervised fine-tuning" in c.text
    conf = json.loads((out / "sft_config.json").read_text())
    (out / "sft_config.json").write_text(json.dumps({**conf, "model": "smollm2-135m"}))
    card.write_card(out)
    c = ModelCard.load(out / "final" / "README.md")
    assert (c.data.base_model, c.data.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")


def test_base_model_info_reads_a_local_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"_name_or_path": "org/some-model"}))
    assert card.base_model_info(str(base))["base_model"] == "org/some-model"
    ModelCard("---\nlicense: mit\nbase_model: org/parent\n---\n# x\n").save(base / "README.md")
    info = card.base_model_info(str(base))
    assert (info["base_model"], info["license"]) == ("org/parent", "mit")
    # a Hub id is never fetched: without a cached card its license stays unknown
    assert card.base_model_info("no-such-org/no-such-model")["license"] is None


def test_card_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither config.yaml" in err[0]
    (tmp_path / "config.yaml").write_text("model: tiny\n")
    assert main(["card", str(tmp_path)]) == 2
    assert "no final model directory" in capsys.readouterr().err


def test_eval_results_leave_out_the_base_models_evaluation():
    res = [("eval_before", {"b:test": {"accuracy": 0.1, "n": 3}}), ("eval_after", {"b:test": {"accuracy": 0.2, "n": 3}})]
    out = card.eval_results(res, "m")
    assert len(out) == 1 and isinstance(out[0], EvalResult) and out[0].metric_value == 0.2
    assert out[0].dataset_type == "b" and out[0].dataset_split == "test"
    with pytest.raises(Exception):
        ModelCardData(model_name=None, eval_results=[EvalResult(task_type="x", dataset_type="d", dataset_name="d",
                                                                metric_type="accuracy", metric_value=1.0)])
