"""Interactive apps over the trained models (the `explorer` extra: `pip install -e ".[explorer]"`)."""
