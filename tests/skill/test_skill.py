"""The agent skill as a package: frontmatter, links, evals aligned with the skill, installability.

What an installer and an agent rely on, checked with their own tools where they exist
(`agentskills validate` from skills-ref, `npx skills add . --list`), and on a copy of the skill
folder alone, since that is how it is installed.
"""

from __future__ import annotations

import itertools
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import strictyaml
from click.testing import CliRunner
from skills_ref.parser import parse_frontmatter
from skills_ref.validator import validate

from modal_llm_serving.recipes.table import RECIPES
from tests.network import NPM_REGISTRY, require_reachable

ROOT = Path(__file__).resolve().parents[2]
SKILL = ROOT / "skills" / "modal-llm-serving"
SKILL_MD = SKILL / "SKILL.md"
AGENTSKILLS = Path(sys.executable).parent / "agentskills"
SKILLS_CLI = "skills@1.5.18"  # newer releases need Node >= 22.20; this machine and CI have 20

# The seed's boundary: what the skill refuses that no sibling takes either.
OUT_OF_SCOPE = {
    "embeddings": r"embeddings",
    "diffusion": r"diffusion",
    "transformers-pipeline": r"transformers pipelines",
    "hosted-api": r"hosted[- ]API",
    "out-of-scope": r"llama\.cpp, Ollama",  # engines other than vLLM and SGLang
}
# each recipe file's eval category: its pattern, or "server" for the Server form
PATTERN_CATEGORIES = {r.file_name: "server" if r.proxy_auth else r.patterns[0] for r in RECIPES}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def skill_text() -> str:
    return SKILL_MD.read_text(encoding="utf-8")


def markdown_files(root: Path = SKILL) -> list[Path]:
    return [root / "SKILL.md", *sorted((root / "references").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(match) for match in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


def broken_links(root: Path) -> list[str]:
    """Every relative link in SKILL.md and references/*.md must resolve inside `root`."""
    problems = []
    for path in markdown_files(root):
        for target in relative_links(path):
            file_part, _, fragment = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)} -> {target}"
            if not resolved.exists():
                problems.append(f"{where}: no such file")
            elif not resolved.is_relative_to(root.resolve()):
                problems.append(f"{where}: leaves the skill folder (breaks when copied alone)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                problems.append(f"{where}: no heading with anchor #{fragment}")
    return problems


def load_evals() -> dict:
    return json.loads((SKILL / "evals" / "evals.json").read_text(encoding="utf-8"))


def load_trigger_evals() -> list[dict]:
    return json.loads((SKILL / "evals" / "trigger-evals.json").read_text(encoding="utf-8"))


def workflow_rows() -> list[tuple[str, str]]:
    """(recipe file, primary reference file) from SKILL.md's workflow table."""
    rows = re.findall(r"^\|.*`scripts/([a-z0-9_]+\.py)`.*\]\(references/([a-z0-9-]+\.md)\)",
                      skill_text(), re.MULTILINE)
    assert rows, "SKILL.md has no workflow table with recipes and references"
    return rows


def siblings() -> set[str]:
    return set(re.findall(r"`(modal-[a-z-]+)`", skill_text())) - {"modal-llm-serving"}


# --- frontmatter and shape ------------------------------------------------------------------------


def test_frontmatter_follows_the_spec() -> None:
    metadata, body = parse_frontmatter(skill_text())
    assert metadata["name"] == SKILL.name == "modal-llm-serving"
    description = metadata["description"]
    assert 1 <= len(description) <= 1024
    assert "Use when" in description  # what it does, then when to use it
    for sibling in siblings():
        assert sibling in description, f"the description should route {sibling} away"
    assert len(metadata.get("compatibility", "")) <= 500
    assert all(isinstance(value, str) for value in metadata.get("metadata", {}).values())
    assert set(metadata) <= {"name", "description", "license", "compatibility", "metadata",
                             "allowed-tools"}
    assert body.startswith("# ")


def test_skill_md_is_under_500_lines() -> None:
    assert len(skill_text().splitlines()) < 500


CONTEXT_BUDGET = 24_000  # bytes: SKILL.md + the playbook + one primary reference (was 39.8 KB)


def test_each_task_loads_little_context() -> None:
    """An agent reads SKILL.md, the playbook and one primary reference on every task: the
    budget keeps them from growing back (the long material lives in references read on demand)."""
    always = len(SKILL_MD.read_bytes()) + len(
        (SKILL / "references" / "performance-playbook.md").read_bytes())
    for recipe, reference in workflow_rows():
        loaded = always + len((SKILL / "references" / reference).read_bytes())
        assert loaded <= CONTEXT_BUDGET, f"{recipe}: {loaded} bytes of context per task"


def test_skills_ref_library_finds_no_problem() -> None:
    assert validate(SKILL) == []


def test_agentskills_validate_command_passes() -> None:
    done = subprocess.run([str(AGENTSKILLS), "validate", str(SKILL)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid skill" in done.stdout


def test_agentskills_validate_catches_a_bad_name(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a copy whose name differs from its folder fails."""
    copy = tmp_path / "modal-llm-serving"
    shutil.copytree(SKILL, copy)
    text = (copy / "SKILL.md").read_text(encoding="utf-8")
    (copy / "SKILL.md").write_text(text.replace("name: modal-llm-serving", "name: Modal_LLM", 1))
    done = subprocess.run([str(AGENTSKILLS), "validate", str(copy)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0


def test_references_are_one_level_deep_and_all_linked_from_skill_md() -> None:
    references = SKILL / "references"
    assert not [path for path in references.iterdir() if path.is_dir()]
    linked = {Path(target.partition("#")[0]).name for target in relative_links(SKILL_MD)
              if target.startswith("references/")}
    present = {path.name for path in references.glob("*.md")}
    assert present == linked, f"orphaned: {present - linked}; missing: {linked - present}"
    assert {"performance-playbook.md", "vllm-online-serving.md", "vllm-cold-starts.md",
            "sglang-low-latency.md", "vllm-throughput.md"} <= present


def test_every_relative_link_resolves() -> None:
    assert broken_links(SKILL) == []


def test_link_checker_reports_what_is_broken(tmp_path: Path) -> None:
    copy = tmp_path / "modal-llm-serving"
    shutil.copytree(SKILL, copy)
    (tmp_path / "outside.md").write_text("# here, but not in the skill\n")
    with (copy / "SKILL.md").open("a", encoding="utf-8") as handle:
        handle.write("\n[a](references/nope.md) [b](../../README.md) "
                     "[c](references/vllm-throughput.md#no-such-heading) [d](../outside.md)\n")
    problems = "\n".join(broken_links(copy))
    assert "references/nope.md: no such file" in problems
    assert "../../README.md: no such file" in problems or "leaves the skill folder" in problems
    # a file that exists, but outside the folder: copied alone, the skill would lose it
    assert "SKILL.md -> ../outside.md: leaves the skill folder" in problems
    assert "no heading with anchor #no-such-heading" in problems


def test_paths_named_in_the_skill_exist() -> None:
    """`scripts/x.py`, `references/y.md`, ... named in backticks in any skill document."""
    named = set()
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(
            r"`(?:skills/modal-llm-serving/)?((?:scripts|references|evals|agents)/[\w./*-]+)`",
            text))
    assert named
    missing = [name for name in sorted(named) if not list(SKILL.glob(name))]
    assert missing == []


def test_quick_start_verifies_the_real_modal_environment_first() -> None:
    quick_start = skill_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for command in ("modal --version", "import modal, sys", "sys.executable",
                    "modal profile current", "mls doctor"):
        assert command in quick_start, command


def test_troubleshooting_covers_what_breaks_first() -> None:
    section = (SKILL / "references" / "troubleshooting.md").read_text(encoding="utf-8").lower()
    assert "references/troubleshooting.md" in skill_text()
    for symptom in ("download", "out of memory", "snapshot", "503", "unpinned revision",
                    "chat-template", "303"):
        assert symptom in section, symptom


def mls_commands() -> list[tuple[str, list[str]]]:
    """Every `mls ...` command line the skill documents (inline code and code blocks)."""
    found = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        lines = re.findall(r"`(mls [^`]+)`", text)
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            block = block.replace("\\\n", " ")  # join continued lines
            lines += re.findall(r"^\s*(mls [^\n]*)", block, re.MULTILINE)
        for line in lines:
            found.append((path.name, line.split(" #", 1)[0].split()))
    return found


def test_every_mls_command_and_option_the_skill_names_exists() -> None:
    """The skill describes the toolkit from its --help: a renamed command or flag fails here."""
    import click

    from modal_llm_serving.cli import cli

    commands = mls_commands()
    assert len(commands) >= 10
    for where, words in commands:
        command: click.Command = cli
        path = ["mls"]
        for word in words[1:]:
            if not isinstance(command, click.Group) or word.startswith("-"):
                break
            sub = command.get_command(click.Context(command), word)
            if sub is None:
                break
            command, path = sub, [*path, word]
        if words[1:] in (["--version"], ["--help"]):  # the root group's own options
            continue
        assert len(path) > 1, f"{where}: {' '.join(words)}: no such mls command"
        if isinstance(command, click.Group):  # naming a group alone ("`mls bench` prints") is fine
            assert words[len(path):] == [], f"{where}: {' '.join(words)}: no such subcommand"
            continue
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for word in words[len(path):]:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") or re.fullmatch(r"-[a-z]", flag):
                assert flag in known, f"{where}: {' '.join(path)} has no option {flag}"


def test_every_recipe_has_a_row_in_the_workflow_table_and_a_reference() -> None:
    recipes = {path.name for path in (SKILL / "scripts").glob("*.py")}
    rows = workflow_rows()
    assert {recipe for recipe, _ in rows} == recipes
    for recipe, reference in rows:
        text = (SKILL / "references" / reference).read_text(encoding="utf-8")
        assert recipe in text, f"{reference} should walk {recipe}"


def recipe_constants(recipe: Path) -> dict[str, object]:
    """Every module-level UPPER_CASE constant of a recipe, with the value the recipe itself
    gives it (imported with the Modal SDK, as `mls` loads a recipe): `SERVED_MODEL_NAME =
    MODEL_NAME` and `20 * MINUTES` included, and none left out for being hard to evaluate."""
    import ast

    from modal_llm_serving.recipes.files import load_recipe

    names = [node.targets[0].id for node in ast.parse(recipe.read_text(encoding="utf-8")).body
             if isinstance(node, ast.Assign) and len(node.targets) == 1
             and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()]
    module = load_recipe(recipe, module_name=f"constants_{recipe.stem}")
    assert all(hasattr(module, name) for name in names), (recipe, names)
    return {name: getattr(module, name) for name in names}


def documented_values(text: str) -> list[tuple[str, str]]:
    """`NAME = value` where a reference walks its recipe, and the knob tables' value column.

    (Elsewhere `NAME = value` is advice, such as "set `MIN_CONTAINERS = 1` in production".)
    """
    walk = text.split("## Walk the recipe", 1)[-1].split("\n## ", 1)[0]
    pairs = re.findall(r"`([A-Z][A-Z0-9_]+) = ([^`]+)`", walk)
    pairs += re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+?) \|", text, re.MULTILINE)
    return pairs


UNPARSED = object()


def parse_documented(value: str) -> object:
    value = value.strip().strip("`")
    if minutes := re.fullmatch(r"(\d+) min", value):
        return int(minutes.group(1)) * 60
    if seconds := re.fullmatch(r"(\d+) s(?: .*)?", value):
        return int(seconds.group(1))
    try:
        return eval(value, {"__builtins__": {}})
    except Exception:
        return UNPARSED  # prose such as "4 routes"


def test_settings_quoted_in_references_match_the_recipes() -> None:
    """A reference that says `MAX_NUM_SEQS = 64` is wrong the day the recipe changes it."""
    checked = 0
    for recipe, reference in workflow_rows():
        constants = recipe_constants(SKILL / "scripts" / recipe)
        text = (SKILL / "references" / reference).read_text(encoding="utf-8")
        for name, value in documented_values(text):
            assert name in constants or name in (SKILL / "scripts" / recipe).read_text(), (
                f"{reference} names {name}, which {recipe} does not define")
            documented = parse_documented(value)
            if isinstance(constants.get(name), str) and documented is UNPARSED:
                documented = value.strip().strip("`")  # a bare string in a table: H100!
            if name not in constants:
                continue  # named in the recipe, not one of its settings (a function, a class)
            assert documented is not UNPARSED, (
                f"{reference}: the value given for {name} ({value!r}) cannot be read as a "
                f"Python value to compare with {recipe}'s {constants[name]!r}")
            assert documented == constants[name], (
                f"{reference}: {name} is {constants[name]!r} in {recipe}, not {value!r}")
            checked += 1
    assert checked >= 20


def test_every_script_compiles(tmp_path: Path) -> None:
    scripts = sorted(SKILL.rglob("*.py"))
    assert len(scripts) >= 4
    for script in scripts:
        py_compile.compile(str(script), cfile=str(tmp_path / f"{script.stem}.pyc"), doraise=True)


def test_agent_interface_metadata() -> None:
    data = strictyaml.load((SKILL / "agents" / "openai.yaml").read_text(encoding="utf-8")).data
    interface = data["interface"]
    assert interface["display_name"].strip()
    assert 25 <= len(interface["short_description"]) <= 64
    assert "$modal-llm-serving" in interface["default_prompt"]
    assert data["policy"]["allow_implicit_invocation"] in {"true", "false"}


def test_repo_metadata_points_at_the_skill() -> None:
    manifest = json.loads((ROOT / ".claude-plugin" / "marketplace.json").read_text())
    skills = [skill for plugin in manifest["plugins"] for skill in plugin["skills"]]
    assert skills == ["./skills/modal-llm-serving"]
    assert all((ROOT / skill / "SKILL.md").exists() for skill in skills)


# --- evals ----------------------------------------------------------------------------------------


def test_evals_schema_ids_and_files() -> None:
    data = load_evals()
    assert data["skill_name"] == "modal-llm-serving"
    ids = [case["id"] for case in data["evals"]]
    assert len(ids) == len(set(ids)), "eval ids must be unique"
    for case in data["evals"]:
        assert set(case) == {"id", "category", "prompt", "expected_output", "files",
                             "expectations"}, case["id"]
        assert case["prompt"].strip() and case["expected_output"].strip()
        assert len(case["expectations"]) >= 2 and all(e.strip() for e in case["expectations"])
        for name in case["files"]:
            assert (SKILL / name).is_file(), f"{case['id']}: {name} does not exist"


def test_evals_cover_every_pattern_with_its_recipe_and_reference() -> None:
    cases = load_evals()["evals"]
    for recipe, reference in workflow_rows():
        category = PATTERN_CATEGORIES[recipe]
        matching = [case for case in cases if case["category"] == category]
        assert matching, f"no eval for the {category} pattern"
        assert any(recipe in case["expected_output"] for case in matching), recipe
        assert any(reference in " ".join(case["expectations"]) for case in matching), reference


def test_evals_cover_every_sibling_and_out_of_scope_case() -> None:
    cases = load_evals()["evals"]
    found = siblings()
    assert found == {"modal-finetuning", "modal-batch-processing", "modal-sandbox"}
    for sibling in found:
        matching = [case for case in cases if case["category"] == sibling]
        assert matching and all(sibling in " ".join(case["expectations"]) for case in matching)
    text = skill_text()
    for category, words in OUT_OF_SCOPE.items():
        assert re.search(words, text, re.IGNORECASE), f"SKILL.md should rule out {category}"
        assert [case for case in cases if case["category"] == category], category
    known = set(PATTERN_CATEGORIES.values()) | found | set(OUT_OF_SCOPE) | {
        "environment", "review", "managed-endpoint"}
    assert {case["category"] for case in cases} <= known


def test_routing_answers_agree_across_skill_references_and_evals() -> None:
    """Voice agents go to the SGLang row, LLM-prompted classification to the throughput row, a
    catalog model with default settings to a managed Endpoint: in SKILL.md's table, in the
    references that discuss the choice, and in the evals that grade it."""
    table = {recipe: row for row in skill_text().splitlines() if row.startswith("|")
             for recipe in re.findall(r"`scripts/([a-z0-9_]+\.py)`", row)}
    assert "voice agents" in table["sglang_low_latency.py"]
    assert "voice" not in table["vllm_server.py"]
    assert "classification" in table["qwen3_throughput.py"]
    primitives = (SKILL / "references" / "modal-primitives.md").read_text(encoding="utf-8")
    assert re.search(r"voice agent[^.]*SGLang recipe", primitives)
    cases = {case["id"]: case for case in load_evals()["evals"]}
    assert "sglang_low_latency.py" in cases["low-latency-voice-agent"]["expected_output"]
    classify = cases["throughput-llm-classification"]
    assert classify["category"] == "throughput"
    assert "qwen3_throughput.py" in classify["expected_output"]
    assert "modal endpoint create" in skill_text()
    assert any("modal endpoint create" in " ".join(case["expectations"])
               for case in cases.values() if case["category"] == "managed-endpoint")


def test_one_concurrency_rule_matching_mls027() -> None:
    """`target_inputs` < `max_inputs` ≤ `--max-num-seqs` wherever the skill states the order, and
    the range SKILL.md quotes for MLS027 is the rule's own."""
    from modal_llm_serving.check.rules import RULES

    stated = []
    for path in markdown_files():
        text = " ".join(path.read_text(encoding="utf-8").split())
        stated += re.findall(r"`target_inputs` [<≤] `max_inputs` [<≤] [^;.(]+", text)
    assert stated and all(s.startswith("`target_inputs` < `max_inputs` ≤ `--max-num-seqs`")
                          for s in stated), stated
    rule = {r.id: r for r in RULES}["MLS027"]
    assert "a quarter of and twice" in rule.fix
    assert "MLS027: `max_inputs` from a quarter of to twice it" in " ".join(skill_text().split())


def test_modal_cli_commands_the_skill_names_exist_in_the_pinned_sdk() -> None:
    """`modal endpoint create --model`, `modal skills install`, ...: read from the installed
    SDK's own --help, so a command or option Modal renames fails here."""
    named = set()
    for path in markdown_files():
        named |= set(re.findall(r"`(modal (?:endpoint|skills|workspace|server)\b[^`]*)`",
                                path.read_text(encoding="utf-8")))
    assert any(command.startswith("modal endpoint create") for command in named)
    # the SDK's own command tree (what `python -m modal` runs), asked in this process: one
    # import of the SDK instead of one per command
    from modal.cli.entry_point import entrypoint_cli

    for command in sorted(named):
        words = command.split()
        path = list(itertools.takewhile(lambda w: re.fullmatch(r"[a-z][a-z-]*", w), words[1:]))
        done = CliRunner().invoke(entrypoint_cli, [*path, "--help"], terminal_width=200)
        assert done.exit_code == 0, f"{command}: {done.output[-300:]}"
        for flag in {w.split("=")[0] for w in words if w.startswith("--")} - {"--help"}:
            assert flag in done.output, f"{command}: the SDK's --help has no {flag}"


def test_trigger_evals_have_enough_positives_and_near_misses() -> None:
    queries = load_trigger_evals()
    assert all(set(query) == {"query", "should_trigger"} for query in queries)
    assert all(isinstance(query["should_trigger"], bool) for query in queries)
    texts = [query["query"] for query in queries]
    assert len(texts) == len(set(texts)), "duplicate queries"
    positives = [q["query"] for q in queries if q["should_trigger"]]
    negatives = [q["query"] for q in queries if not q["should_trigger"]]
    assert len(positives) >= 10 and len(negatives) >= 10
    near_misses = {
        "fine-tuning": r"fine-tun|post-training|LoRA",
        "batch orchestration": r"\.map|spawn|detached",
        "sandboxes": r"sandbox",
        "embeddings": r"embedding",
        "diffusion": r"diffusion",
        "hosted APIs": r"(OpenAI|Anthropic).*API",
    }
    for name, pattern in near_misses.items():
        assert any(re.search(pattern, q, re.IGNORECASE) for q in negatives), name
    patterns = {
        "online": r"OpenAI-compatible|\bAPI\b",
        "cold-start": r"cold start|snapshot|scale to zero",
        "low-latency": r"SGLang|time to first token|latency",
        "throughput": r"tokens per dollar|LLM class|batch",
    }
    for name, pattern in patterns.items():
        assert any(re.search(pattern, q, re.IGNORECASE) for q in positives), name


# --- installability -------------------------------------------------------------------------------


def list_skills(folder: Path) -> tuple[int, str]:
    """`npx skills add FOLDER --list`: (how many skills it found, its output without colours)."""
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx (Node 20) is needed to check that `npx skills add` lists the skill")
    require_reachable(f"{NPM_REGISTRY}/skills", "the npm registry (npx fetches the skills CLI)")
    env = {**os.environ, "CI": "true", "NO_COLOR": "1", "DO_NOT_TRACK": "1",
           "DISABLE_TELEMETRY": "1"}
    done = subprocess.run([npx, "-y", SKILLS_CLI, "add", ".", "--list"], cwd=folder, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          check=False)
    output = ANSI.sub("", done.stdout + done.stderr)
    assert done.returncode == 0, output
    found = re.search(r"Found (\d+) skills?", output)
    assert found, output
    return int(found.group(1)), output


@pytest.mark.index
def test_npx_skills_lists_the_skill_and_skips_none() -> None:
    count, output = list_skills(ROOT)
    # The CLI skips an invalid SKILL.md silently: every one in the repo must be counted.
    present = [path for path in ROOT.glob("skills/*/SKILL.md")]
    assert count == len(present) == 1, output
    assert re.search(r"^\W*modal-llm-serving\s*$", output, re.MULTILINE), output


@pytest.mark.index
def test_the_skill_as_installed_validates_and_lists(tmp_path: Path) -> None:
    """What `mls skill install` puts in an agent's folder (the skill alone, less its evals)."""
    from modal_llm_serving.skill.install import install_skill

    copy = install_skill(tmp_path / "agent" / "skills")
    assert not (copy / "evals").exists()
    assert validate(copy) == []
    assert broken_links(copy) == []
    count, output = list_skills(tmp_path / "agent")
    assert count == 1 and "modal-llm-serving" in output


# Paths an installed skill would not have: the repository's own files and folders.
OUTSIDE_THE_SKILL = re.compile(
    r"docs/|benchmarks/|FACTS\.md|\bsrc/|\btests/|\.venv/|README\.md|Makefile|"
    r"\.ci/|PERFORMANCE\.md|pyproject\.toml")


def test_the_skill_names_no_path_outside_its_folder() -> None:
    """Copied alone into an agent's skills folder, every file and path it names is there."""
    offending = []
    for path in [*markdown_files(), *(SKILL / "agents").glob("*"), *(SKILL / "evals").glob("*")]:
        if path.is_dir():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE_THE_SKILL.search(re.sub(r"https?://\S+", "", line)):  # URLs are fine
                offending.append(f"{path.relative_to(SKILL)}:{number}: {line.strip()[:100]}")
    for path in markdown_files():  # relative links must stay inside the folder too
        for link in relative_links(path):
            target = (path.parent / link.split("#", 1)[0]).resolve()
            if not target.is_relative_to(SKILL.resolve()):
                offending.append(f"{path.relative_to(SKILL)}: link {link} leaves the skill")
    assert offending == []


def recipe_facts(recipe: Path) -> dict[str, set[str]]:
    """What a recipe really uses: Volume names, mount paths, environment variables, flags."""
    from modal_llm_serving.recipes.files import load_recipe, recipe_command

    from ..verify import recipe_llm_kwargs

    source = recipe.read_text(encoding="utf-8")
    module = load_recipe(recipe, module_name=f"facts_{recipe.stem}")
    if hasattr(module, "engine_command"):
        import inspect

        keys = {"api_key", "admin_api_key"} & set(inspect.signature(
            module.engine_command).parameters)  # SGLang's keys travel on its command line
        argv = recipe_command(module) + module.engine_command(**{key: "k" for key in keys})
        flags = {word for word in argv if word.startswith("--")}
    else:
        flags = {"--" + key.replace("_", "-") for key in recipe_llm_kwargs(module)}
    if hasattr(module, "deep_gemm_compile_argv"):
        flags |= {word for word in module.deep_gemm_compile_argv() if word.startswith("--")}
    paths = {str(value) for name, value in vars(module).items()
             if name.endswith("_PATH") and isinstance(value, str)}
    return {"volumes": set(re.findall(r'Volume\.from_name\("([^"]+)"', source)),
            "paths": paths,
            "env": set(re.findall(r'"([A-Z][A-Z0-9_]+)": ', source)),
            "flags": flags}


def test_volumes_paths_env_and_flags_in_references_match_the_recipes() -> None:
    """Where a reference walks its recipe, every Volume, mount path, environment variable and
    engine flag it names is the recipe's own (the SGLang cache once drifted: a Volume name and
    path the recipe did not use)."""
    checked = 0
    for recipe, reference in workflow_rows():
        facts = recipe_facts(SKILL / "scripts" / recipe)
        text = (SKILL / "references" / reference).read_text(encoding="utf-8")
        walk = text.split("## Walk the recipe", 1)[-1].split("\n## ", 1)[0]
        for volume in re.findall(r"`(mls-[a-z-]+-cache)`", walk):
            assert volume in facts["volumes"], f"{reference}: Volume {volume} not in {recipe}"
            checked += 1
        for path in re.findall(r"`(/root/[^`\s]+)`", walk):
            assert path in facts["paths"], f"{reference}: mount path {path} not in {recipe}"
            checked += 1
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)=[^`]*`", walk):
            assert name in facts["env"], f"{reference}: {name} is not set by {recipe}"
            checked += 1
        for flag in re.findall(r"`(--[a-z][a-z0-9-]+)", walk):
            assert flag in facts["flags"], f"{reference}: {flag} is not in {recipe}'s command"
            checked += 1
    assert checked >= 15
