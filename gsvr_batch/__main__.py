"""``python -m gsvr_batch`` is ``gsvr-batch``."""

from .cli import main

if __name__ == "__main__":
    main()
