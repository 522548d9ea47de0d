"""The benchmark helpers: statistics, target checks, probes and a tiny run of bench.py."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402
import measure  # noqa: E402
import profile_rows  # noqa: E402
import report  # noqa: E402

from fairseq_halo.criterions.halo_cross_entropy import (  # noqa: E402
    HaloCrossEntropyConfig,
    HaloCrossEntropyCriterion,
)

EWT = REPO.parent / "shared" / "data" / "ewt"


def timing(cpu, wall=None):
    return {"cpu": cpu, "wall": cpu if wall is None else wall}


def series_of(rounds):
    """Build a bench.py series from per-round dicts of seconds, one timing per key."""
    series = {key: [timing(value) for value in values] for key, values in rounds.items()}
    series.setdefault("log_softmax_nll", [])
    series.setdefault("class_mass", [])
    return series


def halo_criterion(task, **overrides):
    config = HaloCrossEntropyConfig(sentence_avg=False, **overrides)
    return HaloCrossEntropyCriterion.build_criterion(config, task)


def generation(sentences, seconds):
    return {"sentences": sentences, "tokens": 10 * sentences, "cpu": seconds, "wall": seconds}


ROWS = [SimpleNamespace(key=key, label=f"row {key}", model=model)
        for key, model in (("1", "lstm"), ("2", "halo_lstm"), ("3", "halo_lstm"))]


# Statistics


def test_median_iqr_quartiles():
    stats = measure.median_iqr([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["median"] == 3.0
    assert stats["q1"] == 2.0
    assert stats["q3"] == 4.0


def test_median_iqr_single_value():
    stats = measure.median_iqr([7.0])
    assert (stats["median"], stats["q1"], stats["q3"]) == (7.0, 7.0, 7.0)


def test_ratio_summary_pairs_rounds():
    # Load slows both rows of round 2 alike: its ratio stays 0.5, while the ratio of the
    # medians, 3 / 4, would not.
    stats = measure.ratio_summary([1.0, 3.0, 1.0], [2.0, 6.0, 2.0])
    assert stats["values"] == [0.5, 0.5, 0.5]
    assert stats["median"] == 0.5


# Summaries and targets


def summary_for(row2, row3, floor, generate_halo):
    series = series_of({
        "update:1": [1.0, 1.0, 1.0], "update:2": row2, "update:3": row3, "floor": floor,
    })
    series["generate:lstm"] = [generation(10, 1.0)] * 3
    series["generate:halo_lstm"] = [generation(10, s) for s in generate_halo]
    return report.summarize(series, ROWS)


def test_summary_overhead_in_floors():
    # Row 3 costs 0.4 s more than row 2 and one output-layer pass costs 0.5 s: 0.8 passes.
    summary = summary_for([0.9] * 3, [1.3] * 3, [0.5] * 3, [0.8] * 3)
    overhead = summary["halo_overhead_over_floor"]["3"]["cpu"]["median"]
    assert overhead == pytest.approx(0.8)
    assert summary["rows"]["2"]["cpu"]["ratio_to_row_1"]["median"] == pytest.approx(0.9)
    assert summary["generation"]["halo_lstm"]["cpu"]["ratio_to_lstm"]["median"] == \
        pytest.approx(1.25)


def test_targets_hold():
    checks = report.check_targets(summary_for([0.9] * 3, [1.3] * 3, [0.5] * 3, [0.8] * 3), "cpu")
    assert all(check["holds"] for check in checks.values())
    assert len(checks) == 3


def test_targets_missed():
    # Row 2 slower than stock, Halo at 1.2 passes and beam search slower than stock.
    checks = report.check_targets(summary_for([1.1] * 3, [1.7] * 3, [0.5] * 3, [1.25] * 3), "cpu")
    assert [name for name, check in checks.items() if check["holds"]] == []


def test_table_lists_every_row():
    summary = summary_for([0.9] * 3, [1.3] * 3, [0.5] * 3, [0.8] * 3)
    memory = {row.key: {"peak_mib": 100.0} for row in ROWS}
    lines = report.table(summary, memory, ROWS, "cpu").splitlines()
    assert lines[2].startswith("| 1 | row 1 | 1000 [1000, 1000] | 1.00 [1.00, 1.00] | 100 |")
    assert lines[3].startswith("| 2 | row 2 | 900 [900, 900] | 0.90 [0.90, 0.90] |")
    assert "- Halo overhead of row 3 over row 2, in floors: 0.80 [0.80, 0.80]" in lines


def test_table_marks_unmeasured_memory():
    summary = summary_for([0.9] * 3, [1.3] * 3, [0.5] * 3, [0.8] * 3)
    memory = {row.key: {"peak_mib": None} for row in ROWS}
    line = report.table(summary, memory, ROWS, "cpu").splitlines()[2]
    assert "| 1.00 [1.00, 1.00] | - |" in line


# Command-line checks, before any measuring


@pytest.mark.parametrize("argv, message", [
    (["--rows", "2F"], "unknown row keys ['2F']: choose from ['1', '2', '2f'"),
    (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
    (["--warmup-rounds", "-1"], "--warmup-rounds must be at least 0, got -1"),
    ([], "--out is required"),
])
def test_bench_rejects_bad_options(capsys, tmp_path, argv, message):
    out = [] if argv == [] else ["--out", str(tmp_path / "result.json")]
    with pytest.raises(SystemExit):
        bench.parse_args(argv + out)
    assert message in capsys.readouterr().err


def test_bench_rejects_folder_as_out(capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path)])
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


def test_profile_rejects_unknown_row(capsys):
    with pytest.raises(SystemExit):
        profile_rows.parse_args(["--rows", "5"])
    assert "unknown row keys ['5']" in capsys.readouterr().err


# Probes on a tiny model


def test_host_reads_names_lstm_stack(build_model, make_batch, toy_task):
    model = build_model(encoder_layers=3, decoder_layers=3, input_feeding=True).train()
    criterion = halo_criterion(toy_task, halo_weight=0.0)
    sample = make_batch(["w1 w3 w2", "w6 w4"])

    reads = measure.host_reads(lambda: criterion(model, sample)[0].backward())
    (site,) = reads["fairseq_halo"]
    assert site.startswith("fairseq_halo/modules/lstm_stack.py:")
    assert site.endswith(":cpu")
    assert reads["fairseq_halo"][site] == 1
    assert reads["fairseq"] == {}


def test_output_layer_calls_one_joint_call(build_model, make_batch, toy_task):
    model = build_model().train()
    criterion = halo_criterion(toy_task, halo_samples=3)
    sample = make_batch(["w1 w3 w2", "w6 w4"])

    calls = measure.output_layer_calls(model, lambda: criterion(model, sample)[0].backward())
    assert calls == [[4 * 2, sample["target"].size(1)]]
    assert "output_layer" not in vars(model.decoder)


def test_profile_groups_operators():
    groups = profile_rows.group_times({
        "aten::mm": 5.0, "aten::addmm": 2.0, "aten::_log_softmax": 1.0,
        "aten::bernoulli_": 0.5, "aten::add_": 0.25, "aten::mkldnn_rnn_layer": 3.0,
    })
    assert groups == {"matrix products": 7.0, "log-softmax": 1.0, "dropout masks": 0.5,
                      "everything else": 0.25, "fused LSTM layers": 3.0}


# bench.py end to end, on a few sentences of EWT


def test_bench_runs_on_ewt(tmp_path):
    if not (EWT / "train.src").is_file():
        pytest.skip("the shared ewt data is not present")
    out = tmp_path / "result.json"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench.py"), "--out", str(out),
        "--cache", str(tmp_path / "cache"), "--rows", "2", "3", "--rounds", "2",
        "--warmup-rounds", "0", "--batches", "1", "--batch-size", "4", "--gen-batches", "1",
        "--gen-batch-size", "2", "--skip-memory",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

    assert "NaN" not in out.read_text()  # strict JSON, with null for unmeasured memory
    results = json.loads(out.read_text())
    assert results["memory"]["3"] == {"peak_mib": None}
    assert [row["key"] for row in results["rows"]] == ["1", "2", "3"]
    assert results["environment"]["target_vocab"] >= 10000
    assert results["environment"]["train_batches"][0][0] == 4
    assert len(results["series"]["update:3"]) == 2
    assert set(results["summary"]["targets"]["cpu"]) == {
        "Halo overhead of K=1, in output-layer passes",
        "halo_lstm time per update over lstm",
        "halo_lstm beam-search throughput over lstm",
    }
    assert "| 3 | halo_lstm + halo_cross_entropy K=1 |" in result.stdout
    for value in results["summary"]["rows"]["3"]["cpu"]["update_ms"]["values"]:
        assert value > 0
    assert torch.isfinite(torch.tensor(results["summary"]["output_layer_floor_ms"]["cpu"]["q3"]))
