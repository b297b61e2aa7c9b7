"""The README documents every setting and every CLI command it shows exists."""

import re
from pathlib import Path

from unlearnd.api.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_tables():
    documented = set(re.findall(r"`(UNLEARND_[A-Z0-9_]+)`", README))
    fields = {f"UNLEARND_{name.upper()}" for name in Settings.model_fields}
    missing = sorted(fields - documented)
    assert not missing, f"settings missing from README: {missing}"


def test_readme_cli_commands_exist():
    from typer.main import get_command

    from unlearnd.cli.main import app

    root = get_command(app)
    for line in re.findall(r"^unlearnd ([a-z-]+(?: [a-z-]+)?)", README, flags=re.M):
        words = line.split()
        cmd = root.commands.get(words[0])
        assert cmd is not None, f"README shows unknown command: unlearnd {line}"
        if len(words) > 1 and hasattr(cmd, "commands"):
            assert words[1] in cmd.commands, f"README shows unknown command: unlearnd {line}"
