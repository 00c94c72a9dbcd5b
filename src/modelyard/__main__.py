"""``python -m modelyard``: the ``modelyard`` command."""

from modelyard.cli.main import app

if __name__ == "__main__":
    app(prog_name="modelyard")
