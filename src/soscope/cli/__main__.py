"""``python -m soscope.cli``: the same as the ``soscope`` command."""

from soscope.cli._app import main

if __name__ == "__main__":
    main()
