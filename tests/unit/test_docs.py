"""The README documents every option, and CI runs exactly the README's test command."""

import re
from pathlib import Path

from gbatch_flows.options import Options

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_option():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Options.model_fields if f"`--{name}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci.splitlines() or any(
        line.strip() == test_command.strip() for line in ci.splitlines()
    ), f"{test_command!r} is not a line of .ci/run"
