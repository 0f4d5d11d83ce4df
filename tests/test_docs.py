"""README.md and docs/ stay honest: links and anchors resolve, every fenced command names a
script, module, make target or file that exists and only flags its ``--help`` lists, the usage
blocks are what ``--help`` prints, the generated tables are what the committed results render
to, and the AWS path's file names are the ones the renderer writes."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = (README, *sorted((REPO / "docs").glob("*.md")))
PYTHONS = {"python", "python3", "python3.11", "python3.12", ".venv/bin/python"}
SEPARATORS = {";", "&&", "||", "|", "do", "then", "done", "fi", "else", "{", "}", "(", ")"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def fenced(page: Path, *languages: str) -> list[str]:
    """The bodies of the page's fenced blocks in ``languages``."""
    return [body for lang, body in FENCE.findall(page.read_text()) if lang in languages]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor the page's headings define (outside code blocks), duplicates numbered."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if not re.match(r"[a-z]+:", target):
                yield page, target


@pytest.mark.parametrize(("page", "target"), list(links()),
                         ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_every_relative_link_and_anchor_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{_rel(page)} links to missing {target}"
    if anchor:
        assert resolved.suffix == ".md", f"{_rel(page)}: anchor on a non-markdown {target}"
        assert anchor in anchors(resolved), (
            f"{_rel(page)} links to #{anchor}, not a heading of {_rel(resolved)}:"
            f" {sorted(anchors(resolved))}")


# -- fenced shell commands ---------------------------------------------------------------------
def _logical_lines(block: str) -> Iterator[str]:
    """Lines with continuations joined and here-document bodies left out."""
    lines = iter(block.replace("\\\n", " ").splitlines())
    for line in lines:
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        yield line[: heredoc.start()] if heredoc else line
        if heredoc:
            for body in lines:
                if body.strip() == heredoc[1]:
                    break


def commands(block: str) -> Iterator[list[str]]:
    """Each simple command of a shell block as its words (assignments in front dropped)."""
    for line in _logical_lines(block):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS or set(token) <= set(";&|()"):
                while words and re.fullmatch(r"\w+=\S*", words[0]):
                    words.pop(0)
                if words:
                    yield words
                words = []
            else:
                words.append(token)


def shell_commands() -> list[tuple[str, list[str]]]:
    return [(_rel(page), words) for page in PAGES
            for block in fenced(page, "bash", "sh", "shell")
            for words in commands(block)]


@functools.cache
def help_text(*argv: str) -> str:
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, f"{' '.join(argv)} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def _python_target(words: list[str]) -> tuple[list[str], list[str]] | None:
    """(the argv prefix whose --help lists the flags, the rest) of a python command, or None."""
    rest = words[1:]
    if not rest or rest[0] in ("-", "-c"):
        return None
    if rest[0] == "-m":
        module, args = rest[1], rest[2:]
        if args and not args[0].startswith("-") and re.fullmatch(r"[a-z][\w-]*", args[0]):
            sub = [args[0]]
            result = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO,
                                    capture_output=True, timeout=300)
            if result.returncode == 0:
                return ["-m", module, *sub], args[1:]
        return ["-m", module], args
    script = rest[0]
    assert (REPO / script).is_file(), f"no script {script}"
    return [script], rest[1:]


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if re.match(r"--?[A-Za-z]", a)]


def _hyperparameters(target: list[str], args: list[str], listed: set[str]) -> dict[str, str]:
    """Hyperparameters a command passes: ``-H k=v`` to start_training.py, unlisted ``--k v``
    pairs to the training script (which takes any other pair as one)."""
    pairs = {}
    for flag, value in zip(args, [*args[1:], ""][: len(args)], strict=True):
        if flag in ("-H", "--hyperparameter"):
            key, _, val = value.partition("=")
            pairs[key] = val
        elif target == ["training/training_script.py"] and flag.startswith("--") \
                and flag not in listed:
            pairs[flag[2:]] = value
    return pairs


@pytest.mark.parametrize(("page", "words"), shell_commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:70])
def test_every_fenced_command_exists_with_its_flags(page: str, words: list[str]) -> None:
    name = words[0]
    if name in PYTHONS:
        found = _python_target(words)
        if found is None:
            return
        target, args = found
        listed = set(OPTION.findall(help_text(*target)))
        hyper = _hyperparameters(target, args, listed)
        if hyper:
            from training.models import resolve_hyperparameters

            resolve_hyperparameters(hyper)  # raises naming any unknown name or bad value
        unknown = [f for f in _flags(args) if f not in listed
                   and not (target == ["training/training_script.py"] and f[2:] in hyper)]
        assert not unknown, f"{page}: `{' '.join(words)}`: {unknown} not in its --help"
    elif name == "make":
        rules = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert targets and set(targets) <= rules, f"{page}: make {targets}: rules are {rules}"
    elif name == "docker" and words[1:2] == ["build"]:
        dockerfile = words[words.index("-f") + 1]
        assert (REPO / dockerfile).is_file(), f"{page}: no {dockerfile}"
    elif name == "pip" and "-r" in words:
        assert (REPO / words[words.index("-r") + 1]).is_file()


def test_the_command_parser_sees_flags_and_skips_heredocs() -> None:
    """The parser the test above relies on: continuations, comments, loops, here-documents."""
    block = ("for f in a b; do\n  sed -e x $f > y  # note\ndone\npython - <<'PY'\n"
             "import os  # --not-a-flag\nPY\npython x.py --a 1 \\\n  --b=2 && make demo\n")
    assert list(commands(block)) == [["for", "f", "in", "a", "b"], ["sed", "-e", "x", "$f", ">",
                                     "y"], ["python", "-"], ["python", "x.py", "--a", "1",
                                     "--b=2"], ["make", "demo"]]


# -- usage blocks ------------------------------------------------------------------------------
def usage_blocks() -> list[tuple[str, str]]:
    return [(_rel(page), block) for page in PAGES for block in fenced(page, "text")
            if block.startswith("usage: ")]


@pytest.mark.parametrize(("page", "block"), usage_blocks(),
                         ids=lambda v: v if v.endswith(".md") else v.split("[")[0][7:].strip())
def test_usage_blocks_are_what_help_prints(page: str, block: str) -> None:
    prog = block[len("usage: "):].split(" [")[0].split(" (")[0].split()
    argv = prog[1:] if prog[0] == "python" else prog
    printed = help_text(*argv)
    usage = printed[: printed.index("\n\n")] if "\n\n" in printed else printed
    assert " ".join(block.split()) == " ".join(usage.split()), f"{page}: refresh from --help"


def test_every_documented_cli_has_a_usage_block() -> None:
    progs = {block.split(" [")[0] for _, block in usage_blocks()}
    assert {"usage: python -m client predict", "usage: python -m client keys",
            "usage: python -m client info", "usage: python -m bench",
            "usage: python -m local_mode.demo", "usage: deploy_endpoint.py"} <= progs


# -- the README's promises -----------------------------------------------------------------------
def test_readme_is_short_and_shows_the_demo_agreement_on_the_first_screen() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    demo = (REPO / "local_mode" / "demo.py").read_text()
    agreement = next(line for line in lines[:40] if line.startswith("agreement FHE vs clear"))
    assert "```bash\nmake demo\n```" in first_screen
    assert agreement.split(":")[0] + ": {report.agreement" in demo
    assert "OK: encrypted predictions match the clear quantised model on every row" in demo
    assert "OK: encrypted predictions match the clear quantised model on every row" in first_screen


def test_readme_aws_path_writes_the_files_its_later_steps_read(tmp_path: Path) -> None:
    """Steps 3 and 1 of the AWS path: the sed substitutions applied to the example configs
    render, with the README's own command, every policy file the role loop and the bucket
    policy step read; the bucket step sets default encryption (the bucket policy relies on it)."""
    from iam.render import main

    text = README.read_text()
    names = {"ACCOUNT": "111122223333", "AWS_REGION": "us-west-2",
             "BUCKET": "fhe-111122223333-us-west-2"}
    substitutions = re.findall(r'-e "s/([^/]+)/\$(\w+)/g"', text)
    assert len(substitutions) == 3
    build = tmp_path / "build"
    build.mkdir()
    for name in ("train", "deploy", "client"):
        config = (REPO / "iam" / "examples" / f"{name}.json").read_text()
        for old, var in substitutions:
            config = config.replace(old, names[var])
        (build / f"{name}.json").write_text(config)
    [render] = [w for _, w in shell_commands() if w[:3] == ["python", "-m", "iam.render"]
                and "build/train.json" in w]
    argv = [names.get(a.lstrip("$"), a) for a in render[3:]]
    argv = [str(tmp_path / a) if a.startswith("build/") else a for a in argv]
    assert main(argv) == 0
    [loop] = re.findall(r"for role in ([\w -]+); do", text)[:1]
    for role in loop.split():
        doc = f"{role}-role" if role.endswith("-execution") else role
        for kind in ("trust", "policy"):
            assert (build / "iam" / f"{doc}-{kind}.json").is_file(), (role, kind)
    assert (build / "iam" / f"bucket-policy-{names['BUCKET']}.json").is_file()
    assert "put-bucket-encryption" in text and "--kms-key" not in text


# -- generated and table-driven sections -----------------------------------------------------------
def test_benchmark_tables_are_generated_from_the_committed_results() -> None:
    from bench.report import (
        IMAGES_BEGIN,
        IMAGES_END,
        README_BEGIN,
        README_END,
        load_results,
        render_images_section,
        render_readme_section,
    )

    text = (REPO / "docs" / "benchmark.md").read_text()
    doc = load_results(REPO / "bench" / "results" / "latest.json")
    bench = text[text.index(README_BEGIN): text.index(README_END) + len(README_END)]
    images = text[text.index(IMAGES_BEGIN): text.index(IMAGES_END) + len(IMAGES_END)]
    assert bench == render_readme_section(doc), "run python -m bench --render-readme"
    assert images == render_images_section(doc["images"])


def test_troubleshooting_covers_every_error_code() -> None:
    from common.contract import ERROR_CODES

    text = (REPO / "docs" / "troubleshooting.md").read_text()
    missing = sorted({row.code for row in ERROR_CODES if f"`{row.code}`" not in text})
    assert not missing, f"docs/troubleshooting.md lacks {missing}"


def test_docs_name_no_placeholder_text() -> None:
    for page in PAGES:
        assert not re.search(r"\b(TODO|TBD|FIXME|XXX)\b", page.read_text()), _rel(page)


def test_example_configs_are_json_objects() -> None:
    for path in sorted((REPO / "iam" / "examples").glob("*.json")):
        assert isinstance(json.loads(path.read_text()), dict), path


def _table_names(page: str, header: str) -> set[str]:
    """The backticked names in the first column of the markdown table under ``header``."""
    text = (REPO / "docs" / page).read_text()
    table = text[text.index(header):].split("\n\n")[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        names.update(re.findall(r"`([^`]+)`", row.split("|")[1]))
    return names


def test_the_hyperparameter_table_lists_exactly_what_the_job_accepts() -> None:
    from training.models import JOB_PARAMS, MODELS, TUNE_PARAMS

    accepted = {p.name for p in (*JOB_PARAMS, *TUNE_PARAMS)}
    accepted |= {p.name for spec in MODELS.values() for p in spec.params}
    listed = _table_names("training.md", "| name | models | default | meaning |")
    assert listed == accepted, (f"missing {sorted(accepted - listed)},"
                                f" not accepted {sorted(listed - accepted)}")


def test_the_start_training_table_lists_exactly_its_flags() -> None:
    listed = {name.split()[0] for name in
              _table_names("training.md", "| flag | env | meaning |") if name.startswith("-")}
    printed = help_text("start_training.py")
    in_usage = set(OPTION.findall(printed.split("\n\n")[0])) - {"-h"}
    anywhere = set(OPTION.findall(printed))
    assert in_usage <= listed, f"missing {sorted(in_usage - listed)}"
    assert listed <= anywhere, f"not flags {sorted(listed - anywhere)}"


def test_the_serving_settings_table_lists_exactly_the_servers_environment() -> None:
    import inference.settings as settings

    read = {value for name, value in vars(settings).items()
            if name.startswith("ENV_") and isinstance(value, str)}
    listed = _table_names("serving.md", "| Variable | Default | Meaning |")
    assert listed == read, f"missing {sorted(read - listed)}, not read {sorted(listed - read)}"
