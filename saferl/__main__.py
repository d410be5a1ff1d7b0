"""``python -m saferl``: the ``saferl`` command (:func:`saferl.cli.console_main`)."""

from saferl.cli import console_main

if __name__ == "__main__":
    console_main()
