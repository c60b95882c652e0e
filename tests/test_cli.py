"""The `genrenet` command (python -m genrenet): subcommands, --help, --version, built-in configs, demo."""

import json

import pytest

import genrenet
from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet import cli, demo_data
from genrenet.config import builtin_configs, load_config
from genrenet.errors import UserError


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"genrenet {genrenet.__version__}"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: genrenet")
    assert all(f"  {name} " in out for name in ("train", "evaluate", "predict", "demo"))


def test_no_command_shows_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: genrenet")


def test_unknown_command_is_one_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["tran"])
    assert stop.value.code == 2
    assert "invalid choice: 'tran'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, option", [("train", "--config"), ("evaluate", "--split"), ("predict", "--top-k"), ("demo", "runs/demo")]
)
def test_each_command_has_its_own_help(command, option, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: genrenet {command}") and option in out


def test_train_evaluate_predict_through_the_dispatcher(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=4)
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path, data, train={"epochs": 1}))
    best = tmp_path / "run" / "best.pt"
    assert cli.main(["train", "--config", str(cfg)]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(best)]) == 0
    assert (tmp_path / "run" / "eval_best_test.json").is_file()
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(best), str(data / "tone"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4 and all(r["top"] for r in results)


def test_a_user_error_is_one_line(capsys):
    assert cli.main(["train", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: config file not found: nope (built-in configs: {', '.join(builtin_configs())})"]


# --- built-in configs ------------------------------------------------------------------------


def test_builtin_configs_are_the_repository_configs():
    # ./configs links to the packaged folder, so both spellings read the same files.
    assert (REPO_ROOT / "configs").resolve() == (REPO_ROOT / "genrenet" / "configs").resolve()
    assert builtin_configs() == sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml"))
    assert {"demo", "gtzan", "esc10"} <= set(builtin_configs())


def test_builtin_config_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("gtzan") == load_config(REPO_ROOT / "configs" / "gtzan.yaml")
    assert load_config("demo.yaml", ["train.epochs=1"]).train.epochs == 1


def test_a_local_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "gtzan.yaml", tiny_config_dict(tmp_path, tmp_path / "data"))
    assert load_config("gtzan.yaml").run.dir == str(tmp_path / "run")


def test_a_path_is_never_taken_for_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="config file not found: configs/gtzan.yaml"):
        load_config("configs/gtzan.yaml")


# --- genrenet demo ---------------------------------------------------------------------------


def fake_demo_steps(monkeypatch, fail=None):
    """Record the demo's steps instead of running them (the real demo takes a minute)."""
    calls = []

    def step(name):
        def run(argv, prog=None):
            calls.append((name, list(argv)))
            return 1 if name == fail else 0

        return run

    monkeypatch.setattr(demo_data, "main", step("demo_data"))
    for name in ("run_train", "run_evaluate", "run_predict"):
        monkeypatch.setattr(cli, name, step(name))
    return calls


def test_demo_runs_the_whole_demo_in_order(monkeypatch, capsys):
    calls = fake_demo_steps(monkeypatch)
    assert cli.main(["demo"]) == 0
    assert calls == [
        ("demo_data", ["data/demo"]),
        ("run_train", ["--config", "demo", "--overwrite"]),
        ("run_evaluate", ["--checkpoint", "runs/demo/best.pt"]),
        ("demo_data", ["data/demo-unseen", "--tracks-per-genre", "1", "--seed", "2026"]),
        (
            "run_predict",
            ["--checkpoint", "runs/demo/best.pt", "data/demo-unseen", "--plot", "runs/demo/unseen_timeline.png"],
        ),
    ]
    assert "== demo 5/5" in capsys.readouterr().out


def test_demo_stops_at_a_failed_step(monkeypatch):
    calls = fake_demo_steps(monkeypatch, fail="run_train")
    assert cli.main(["demo"]) == 1
    assert [name for name, _ in calls] == ["demo_data", "run_train"]
