"""Tests of the shell scripts: dry runs of every language file print the expected commands, and
the demo pipeline runs end to end at its smallest size."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
USER_DIR = str(REPO / "fairseq_halo")
SHIPPED = {"zh", "tr", "ewt"}
NOT_SHIPPED = {"chinese", "uzbek", "turkish", "somali", "amharic", "yoruba"}

# Settings of Mei et al. (2018) that every language file must pass.
PAPER_TRAIN_OPTIONS = [("--optimizer", "adam"), ("--batch-size", "64"), ("--clip-norm", "5"),
                       ("--dropout", "0.5"), ("--arch", "halo_lstm_paper"),
                       ("--criterion", "halo_cross_entropy")]


def run_script(script: Path, cwd: Path, run_root: Path, *args, **env_overrides):
    env = {key: value for key, value in os.environ.items()
           if key not in {"DATA", "NAME", "ARCH", "SEEDS", "CONFIGS", "MAX_EPOCH", "DRY_RUN"}}
    env.update(RUN_ROOT=str(run_root), **env_overrides)
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def commands(output: str, program: str):
    """Parse the printed commands ('+ program args ...') of one program into argument lists."""
    parsed = []
    for line in output.splitlines():
        if line.startswith("+ "):
            words = shlex.split(line[2:])
            if "/" not in program and words[0] == program:
                parsed.append(words)
            elif words[0].endswith(program):
                parsed.append(words)
    return parsed


def option(words, name):
    """Return the value after ``name`` in an argument list (None when absent)."""
    return words[words.index(name) + 1] if name in words else None


def dry_run(tmp_path: Path, name: str, **env):
    result = run_script(SCRIPTS / "lang" / f"{name}.sh", tmp_path, tmp_path / "runs",
                        "--dry-run", **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_language_has_a_file():
    names = {path.stem for path in (SCRIPTS / "lang").glob("*.sh")}
    assert names == SHIPPED | NOT_SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED | NOT_SHIPPED))
def test_language_dry_run_commands(tmp_path, name):
    output = dry_run(tmp_path, name)

    # Data: the shipped sets beside the repository, the others under data/.
    (prepare,) = commands(output, "halo-prepare")
    expected_data = (REPO.parent / "shared" / "data" / name).resolve() if name in SHIPPED \
        else REPO / "data" / name
    assert Path(prepare[1]).resolve() == expected_data.resolve()
    assert prepare[2] == str(tmp_path / "runs" / name / "prepared")

    # Training: paper settings, absolute --user-dir, one run per configuration.
    trains = commands(output, "fairseq-train")
    assert len(trains) == 2
    for words in trains:
        assert option(words, "--user-dir") == USER_DIR
        for flag, value in PAPER_TRAIN_OPTIONS:
            assert option(words, flag) == value, flag
        assert option(words, "--best-checkpoint-metric") == "loss"
        assert "--no-epoch-checkpoints" in words
    assert option(trains[0], "--halo-weight") == "0"
    assert option(trains[1], "--halo-weight") == "1"
    assert option(trains[1], "--halo-alpha") == "1"
    assert option(trains[1], "--halo-beta") == "19"

    # Generation keeps every sentence; scoring reads the raw references.
    for words in commands(output, "fairseq-generate"):
        assert option(words, "--user-dir") == USER_DIR
        assert option(words, "--beam") == "5"
        assert option(words, "--required-batch-size-multiple") == "1"
        assert option(words, "--gen-subset") == "test"
        assert option(words, "--path").endswith("/checkpoints/checkpoint_best.pt")
    for words in commands(output, "halo-score"):
        assert option(words, "--ref") == str(tmp_path / "runs" / name / "prepared" / "raw"
                                             / "test.tgt")
        assert option(words, "--hyp-format") == "generate"


def test_dry_run_writes_nothing(tmp_path):
    dry_run(tmp_path, "zh")
    assert not (tmp_path / "runs").exists()


def test_dry_run_from_variable(tmp_path):
    result = run_script(SCRIPTS / "lang" / "tr.sh", tmp_path, tmp_path / "runs", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert len(commands(result.stdout, "fairseq-train")) == 2
    assert not (tmp_path / "runs").exists()


def test_environment_overrides_settings(tmp_path):
    output = dry_run(tmp_path, "ewt", ARCH="halo_lstm_small", MAX_EPOCH="3", SEEDS="1 2")
    trains = commands(output, "fairseq-train")
    assert len(trains) == 4
    assert {option(words, "--arch") for words in trains} == {"halo_lstm_small"}
    assert {option(words, "--max-epoch") for words in trains} == {"3"}
    assert sorted(option(words, "--seed") for words in trains) == ["1", "1", "2", "2"]


def test_shipped_language_settings(tmp_path):
    output = dry_run(tmp_path, "tr")
    (prepare,) = commands(output, "halo-prepare")
    assert option(prepare, "--spm-vocab-size") == "3000"
    assert "--reverse-source" in prepare
    assert option(commands(output, "fairseq-train")[0], "--max-epoch") == "60"


@pytest.mark.parametrize("name", ["zh", "tr"])
def test_shipped_sentencepiece_size_trains(tmp_path, name):
    data = REPO.parent / "shared" / "data" / name
    if not (data / "train.src").is_file():
        pytest.skip(f"the shared {name} data is not present")
    (prepare,) = commands(dry_run(tmp_path, name), "halo-prepare")
    size = option(prepare, "--spm-vocab-size")
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_halo.prepare", str(data), str(tmp_path / "prepared"),
         "--spm-vocab-size", size],
        capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stderr[-2000:]


def test_driver_rejects_unknown_configuration(tmp_path):
    result = run_script(SCRIPTS / "run.sh", tmp_path, tmp_path / "runs", "--dry-run",
                        DATA=str(tmp_path), CONFIGS="nohalo fancy")
    assert result.returncode != 0
    assert "unknown configuration 'fancy'" in result.stderr


def test_driver_requires_data_variable(tmp_path):
    result = run_script(SCRIPTS / "run.sh", tmp_path, tmp_path / "runs", "--dry-run")
    assert result.returncode != 0
    assert "DATA is not set" in result.stderr


def test_demo_dry_run_commands(tmp_path):
    result = run_script(SCRIPTS / "demo.sh", tmp_path, tmp_path / "runs", "--dry-run")
    assert result.returncode == 0, result.stderr
    (generate,) = commands(result.stdout, "halo-demo-data")
    assert option(generate, "--train") == "2000"
    trains = commands(result.stdout, "fairseq-train")
    assert [option(words, "--arch") for words in trains] == ["halo_lstm_small"] * 2
    assert [option(words, "--halo-weight") for words in trains] == ["0", "1"]
    assert not (tmp_path / "runs").exists()


def plugin_ready() -> bool:
    """Whether the model and criterion of the plugin are written yet."""
    model = REPO / "fairseq_halo" / "models" / "halo_lstm.py"
    criterion = REPO / "fairseq_halo" / "criterions" / "halo_cross_entropy.py"
    return model.is_file() and model.stat().st_size > 0 and criterion.is_file() \
        and criterion.stat().st_size > 0


# NOTE: this end-to-end run takes about 30 s on two idle CPU cores (8 fairseq processes).
@pytest.mark.skipif(not plugin_ready(), reason="halo_lstm or halo_cross_entropy not written yet")
def test_tiny_demo_end_to_end(tmp_path):
    result = run_script(SCRIPTS / "demo.sh", tmp_path, tmp_path / "runs", TINY="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "demo-tiny"
    for config in ("nohalo", "halo"):
        # Every test sentence is decoded.
        generated = (run_dir / f"{config}-seed1" / "generate.txt").read_text("utf-8")
        ids = sorted(int(line.split("\t")[0][2:]) for line in generated.splitlines()
                     if line.startswith("H-"))
        assert ids == list(range(20))
        report = json.loads((run_dir / f"{config}-seed1" / "score.json").read_text("utf-8"))
        assert report["sentences"] == 20
    lines = result.stdout[result.stdout.index("Results for demo-tiny"):].splitlines()
    header = lines[1]
    for column in ("BLEU", "F1 PRED", "F1 ARG", "recoverability"):
        assert column in header
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert sorted(rows) == ["halo", "nohalo"]
    for cells in rows.values():
        assert "n/a" not in cells


def write_run(folder: Path, bleu: float, best_loss: float):
    folder.mkdir(parents=True)
    report = {"bleu": {"score": bleu}, "f1": {"predicate": {"f1": 50.0},
                                              "argument": {"f1": 60.0}},
              "recoverability": {"score": 90.0}}
    (folder / "score.json").write_text(json.dumps(report), encoding="utf-8")
    (folder / "train.log").write_text(
        f"valid | epoch 001 | loss 9.0 | best_loss 9.0\nvalid | epoch 002 | best_loss {best_loss}\n",
        encoding="utf-8",
    )


def test_results_table_mean_and_sd(tmp_path):
    write_run(tmp_path / "halo-seed1", bleu=10.0, best_loss=4.5)
    write_run(tmp_path / "halo-seed2", bleu=20.0, best_loss=4.0)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"),
         str(tmp_path / "halo-seed1"), str(tmp_path / "halo-seed2")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in result.stdout.splitlines()}

    # BLEU 10 and 20: mean 15, sample standard deviation sqrt(50) = 7.07.
    assert rows[("halo", "mean")][0] == "15.00"
    assert rows[("halo", "sd")][0] == "7.07"
    # The last best_loss of each log: 4.5 and 4.0, mean 4.25.
    assert rows[("halo", "mean")][4] == "4.25"


def test_results_table_separates_run_folders(tmp_path):
    write_run(tmp_path / "zh-modelz" / "nohalo-seed1", bleu=10.0, best_loss=4.5)
    write_run(tmp_path / "zh-modelz" / "nohalo-seed2", bleu=20.0, best_loss=4.0)
    write_run(tmp_path / "zh-modelp" / "nohalo-seed1", bleu=30.0, best_loss=3.0)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results_table.py"),
         *(str(path) for path in sorted(tmp_path.glob("*/nohalo-seed*")))],
        capture_output=True, text=True, timeout=60, check=True,
    )
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in result.stdout.splitlines()}

    assert rows[("zh-modelz/nohalo", "mean")][0] == "15.00"
    assert rows[("zh-modelp/nohalo", "1")][0] == "30.00"
    assert ("zh-modelp/nohalo", "mean") not in rows
