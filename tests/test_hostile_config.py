"""Hostile or odd config files: each is refused with one line naming the file, in bounded memory
and time, before any work starts; and settings that would exhaust memory are refused up front.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT
from genrenet.config import load_config
from genrenet.errors import UserError


def error_of(path, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"multi-line error: {message!r}"
    return message


def alias_bomb(levels: int) -> str:
    """A "billion laughs" file: each level is a list of ten aliases of the level before, so it
    stands for 10**levels values in well under a kilobyte."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# Loads the config in a child process whose address space may grow by at most 1 GiB beyond what
# the imports took, so the old code (which expanded the bomb while copying the settings) fails
# with a MemoryError instead of taking the machine's memory.
BOUNDED_LOAD = textwrap.dedent("""
    import resource, sys
    from genrenet.config import load_config
    from genrenet.errors import UserError
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
    try:
        load_config(sys.argv[1])
    except UserError as error:
        print(f"error: {error}")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9))
    assert path.stat().st_size < 1024
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BOUNDED_LOAD, str(path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"error: {path}: ") and "alias" in result.stdout, result.stdout


def test_alias_that_contains_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train: &t {epochs: 3, again: *t}\n")
    message = error_of(path)
    assert str(path) in message and "alias" in message


def test_plain_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "audio: &a {sample_rate: 8000, clip_seconds: &c 2.0, hop_seconds: *c}\n"
        "train:\n  <<: {epochs: 3, lr: 0.01}\n  epochs: 4\n"
    )
    config = load_config(path)
    assert config.audio.hop_seconds == 2.0 and config.audio.sample_rate == 8000
    assert config.train.epochs == 4 and config.train.lr == 0.01


@pytest.mark.parametrize(
    "text,key,line,first",
    [
        ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n", "epochs", 4, 2),
        ("train:\n  epochs: 3\naudio: {}\ntrain:\n  lr: 0.1\n", "train", 4, 1),
        ("model: {name: small_cnn, width: 8, width: 16}\n", "width", 1, 1),
    ],
    ids=["key", "section", "flow mapping"],
)
def test_duplicate_keys_are_refused(tmp_path, text, key, line, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    message = error_of(path)
    assert str(path) in message
    assert f"duplicate key '{key}' on line {line} (first on line {first})" in message, message


@pytest.mark.parametrize(
    "text,got",
    [
        ("- 1\n- 2\n", "a list"),
        ("just some text\n", "the text 'just some text'"),
        ("42\n", "int 42"),
        ("false\n", "the boolean false"),
    ],
    ids=["list", "string", "number", "false"],
)
@pytest.mark.parametrize("overrides", [[], ["train.epochs=3"]], ids=["plain", "with --set"])
def test_config_that_is_not_a_mapping(tmp_path, text, got, overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    message = error_of(path, overrides)
    assert message.startswith(f"{path}: expected a mapping of sections") and message.endswith(got), message


@pytest.mark.parametrize(
    "data,where",
    [
        (b"run:\n  dir: caf\xe9\n", "byte 0xe9 at offset 15"),  # Latin-1
        (b"\xff\xfer\x00u\x00n\x00:\x00\n\x00", "byte 0xff at offset 0"),  # UTF-16
    ],
    ids=["latin-1", "utf-16"],
)
def test_config_that_is_not_utf8(tmp_path, data, where):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(data)
    message = error_of(path)
    assert message.startswith(f"{path}: not UTF-8 text ({where})"), message


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("\ufefftrain:\n  epochs: 2\nrun:\n  dir: runs/café\n".encode())
    config = load_config(path)
    assert config.train.epochs == 2 and config.run.dir == "runs/café"


def test_date_like_folder_name_stays_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("run:\n  dir: 2024-01-01\n")
    assert load_config(path).run.dir == "2024-01-01"


def test_set_and_binary_values_are_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("run: !!set {a, b}\n")
    assert "not allowed in a config" in error_of(path)
    path.write_text("run: {dir: !!binary aGVsbG8=}\n")
    assert "not allowed in a config" in error_of(path)


def test_train_cli_refuses_a_list_config_in_one_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("- train\n- epochs\n")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(path), "--set", "train.epochs=2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: expected a mapping of sections (data, audio, features, model, augment, train, run), got a list"
    ]
