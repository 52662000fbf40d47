"""``python -m transformer``: see ``transformer.server``."""

from transformer.server import main

if __name__ == "__main__":
    main()
