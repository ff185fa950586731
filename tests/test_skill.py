"""`mls skill path|install`: the skill this toolkit carries, installed whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.skill import skill_dir


def test_path_is_the_carried_skill() -> None:
    result = CliRunner().invoke(cli, ["skill", "path"])
    assert result.exit_code == 0
    assert Path(result.output.strip()) == skill_dir()
    assert (skill_dir() / "SKILL.md").is_file()


def test_install_copies_all_but_the_evals_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["skill", "install", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    installed = tmp_path / "modal-llm-serving"
    carried = sorted(p.relative_to(skill_dir()) for p in skill_dir().rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    # the grading criteria and eval inputs stay behind: an agent under test must not read them
    assert (skill_dir() / "evals" / "evals.json").is_file()
    expected = [path for path in carried if path.parts[0] != "evals"]
    assert len(expected) < len(carried)
    assert sorted(p.relative_to(installed) for p in installed.rglob("*") if p.is_file()) == expected
    assert not (installed / "evals").exists()
    assert not list(installed.rglob("evals.json")) and not list(installed.rglob("review_me.py"))
    (installed / "SKILL.md").write_text("edited")
    again = runner.invoke(cli, ["skill", "install", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output
    assert (installed / "SKILL.md").read_text() == "edited"  # nothing touched
    forced = runner.invoke(cli, ["skill", "install", "--dir", str(tmp_path), "--force"])
    assert forced.exit_code == 0
    assert (installed / "SKILL.md").read_text() == (skill_dir() / "SKILL.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["modal-llm-serving"]  # no staging left


def test_install_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["skill", "install", "--dir", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot write to" in result.output
    assert "Traceback" not in result.output


def _installed_files(folder: Path) -> list[Path]:
    """The skill's files under `folder`, less what is never installed (its evals)."""
    from modal_llm_serving.skill.install import NOT_INSTALLED

    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts
                  and p.relative_to(folder).parts[0] not in NOT_INSTALLED)


def test_install_goes_where_modal_and_the_skills_cli_put_skills(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both folders of the project by default (`modal skills install` writes .agents/skills,
    with --claude .claude/skills; `npx skills add` both), the home folder's with --global."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(home))
    result = CliRunner().invoke(cli, ["skill", "install"])
    assert result.exit_code == 0, result.output
    for folder in (".agents/skills", ".claude/skills"):
        installed = project / folder / "modal-llm-serving"
        assert _installed_files(installed) == _installed_files(skill_dir())
        assert str(installed) in result.output
    assert not home.exists()  # the project's folders only

    only_claude = CliRunner().invoke(cli, ["skill", "install", "--agent", "claude", "--global"])
    assert only_claude.exit_code == 0, only_claude.output
    assert (home / ".claude" / "skills" / "modal-llm-serving" / "SKILL.md").is_file()
    assert not (home / ".agents").exists()


def test_one_installed_copy_stops_the_others_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    claude = tmp_path / ".claude" / "skills" / "modal-llm-serving"
    claude.mkdir(parents=True)
    (claude / "SKILL.md").write_text("an older copy")
    result = CliRunner().invoke(cli, ["skill", "install"])
    assert result.exit_code == 2 and f"{claude} exists; pass --force" in result.output
    assert not (tmp_path / ".agents").exists()  # refused before the first folder was written
    forced = CliRunner().invoke(cli, ["skill", "install", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (claude / "SKILL.md").read_text() == (skill_dir() / "SKILL.md").read_text()
    assert (tmp_path / ".agents" / "skills" / "modal-llm-serving" / "SKILL.md").is_file()
