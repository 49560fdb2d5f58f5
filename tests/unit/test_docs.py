"""The README documents every option (its commands run in tests/docs, CI's in .ci/run)."""

from pathlib import Path

from gbatch_flows.options import Options

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_option():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Options.model_fields if f"`--{name}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"

