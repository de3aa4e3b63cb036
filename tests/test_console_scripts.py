"""The pose-* console scripts (setup.py): each is in the installed distribution's metadata, starts
its tool under the error convention and answers --help; ``python tools/X.py`` and
``python -m pose_megatron.commands.X`` are the same program.

The entry points come from the installed metadata, so a stale editable install fails here:
``bash tools/setup_env.sh`` reinstalls when setup.py changed.
"""

import importlib.metadata
import os
import pkgutil
import subprocess
import sys
import sysconfig

import pytest

import pose_megatron.commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.iter_modules(pose_megatron.commands.__path__))


def script_name(module: str) -> str:
    return "pose-" + module.replace("_", "-")


def console_scripts() -> dict:
    dist = importlib.metadata.distribution("pose_megatron")
    return {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}


def test_every_command_module_is_an_installed_console_script():
    scripts = console_scripts()
    assert sorted(scripts) == sorted(script_name(m) for m in MODULES), \
        "installed entry points differ from pose_megatron/commands/ (rerun tools/setup_env.sh)"
    for module in MODULES:
        assert scripts[script_name(module)].value == f"pose_megatron.commands.{module}:run"
        assert os.path.isfile(os.path.join(sysconfig.get_path("scripts"), script_name(module)))
    assert len(MODULES) == 9  # the eight tools and pose-train


@pytest.mark.parametrize("module", MODULES)
def test_console_script_help(module, monkeypatch, capsys):
    name = script_name(module)
    run = console_scripts()[name].load()
    monkeypatch.setattr(sys, "argv", [name, "--help"])  # as the installed script starts it
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 0
    out = capsys.readouterr().out
    # training's parser names itself as it is documented (training/arguments.py, prog=...)
    prog = "python -m pose_megatron.train" if module == "train" else name
    assert out.startswith(f"usage: {prog} "), out[:200]
    assert "--debug" in out  # every tool's parser has the error convention's switch


def test_console_script_error_is_one_line_with_status_2(monkeypatch, capsys):
    run = console_scripts()["pose-eval-passkey"].load()
    monkeypatch.setattr(sys, "argv", ["pose-eval-passkey", "--trials", "0"])
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --trials must be >= 1, got 0\n"


def test_script_module_and_console_script_are_the_same_program():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = [subprocess.run(argv + ["--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
            for argv in ([sys.executable, os.path.join("tools", "convert_megatron_to_hf.py")],
                         [sys.executable, "-m", "pose_megatron.commands.convert_megatron_to_hf"],
                         [os.path.join(sysconfig.get_path("scripts"),
                                       "pose-convert-megatron-to-hf")])]
    for done in outs:
        assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    tool, module, script = (done.stdout for done in outs)
    assert tool.startswith("usage: convert_megatron_to_hf.py ") and "--max-shard-size" in tool
    assert module == tool
    # the console script differs only in the program name (and the usage line's wrapping)
    assert script.startswith("usage: pose-convert-megatron-to-hf ")
    assert script.split("\n\n", 1)[1] == tool.split("\n\n", 1)[1]
