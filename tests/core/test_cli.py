"""`unlearnd demo-model` and `unlearnd unlearn`: outputs on success, a one-line error and exit 2 on bad input."""

import json

import pytest
from typer.testing import CliRunner

from unlearnd.cli.main import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_unlearn_writes_adapter_and_report(tiny_world, tmp_path):
    out = tmp_path / "adapter"
    res = _invoke(
        "unlearn",
        "--model",
        tiny_world.model_dir,
        "--forget",
        tiny_world.forget_path,
        "--retain",
        tiny_world.retain_path,
        "--holdout",
        tiny_world.holdout_path,
        "--max-steps",
        80,
        "--anchor-samples",  # the tiny world's 80-step budget was sized without them (conftest.fast_config)
        0,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["outcome"] == "forgotten" and report["after"]["forget"]["extraction"] == 0.0
    for when in ("before", "after"):
        for s in ("forget", "retain", "holdout"):
            assert {"ma", "el10", "extraction", "extraction_short", "perplexity"} <= set(report[when][s])
        assert {"loss_auc", "zlib_auc", "min_k_auc"} <= set(report[when]["mia"])
    assert "verdict: forgotten" in res.output and "MIA AUC, Min-k%" in res.output
    assert report["steps"] > 0 and report["wall_seconds"] > 0 and report["trainable_params"] > 0


@pytest.mark.slow
def test_demo_model_builds_a_small_world(tmp_path):
    res = _invoke(
        "demo-model", "--out", tmp_path / "w", "--size", "tiny", "--people", 40, "--forget", 4, "--holdout", 8
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "w" / "world.json").read_text())
    assert info["training"]["probe_extraction"] >= 0.9
    assert len((tmp_path / "w" / "forget.jsonl").read_text().splitlines()) == 4
    assert len((tmp_path / "w" / "holdout.jsonl").read_text().splitlines()) == 8


def _assert_one_line_error(res, fragment):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], res.output


def test_unlearn_bad_inputs_exit_nonzero_with_one_line(tiny_world, tmp_path):
    base = ["unlearn", "--model", tiny_world.model_dir, "--out", tmp_path / "o"]
    _assert_one_line_error(_invoke(*base, "--forget", tmp_path / "missing.jsonl"), "file not found")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _assert_one_line_error(_invoke(*base, "--forget", empty), "empty")
    _assert_one_line_error(_invoke(*base, "--forget", tiny_world.forget_path, "--method", "sgd"), "unknown method")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    _assert_one_line_error(_invoke(*base, "--forget", bad), "unknown record field")
    not_a_model = tmp_path / "notamodel"
    not_a_model.mkdir()
    (not_a_model / "weights.safetensors").write_bytes(b"garbage")
    (not_a_model / "config.json").write_text('{"model_type": "bert"}')
    res = _invoke("unlearn", "--model", not_a_model, "--forget", tiny_world.forget_path, "--out", tmp_path / "o")
    _assert_one_line_error(res, "cannot load a causal LM")
    _assert_one_line_error(
        _invoke(
            "unlearn", "--model", tmp_path / "nowhere", "--forget", tiny_world.forget_path, "--out", tmp_path / "o"
        ),
        "not a directory",
    )
