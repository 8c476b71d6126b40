"""The shipped configs, installed as the `recipe.conf` package (see pyproject.toml's package-dir)."""
