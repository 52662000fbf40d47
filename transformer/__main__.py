"""``python -m transformer``: see ``transformer.server``."""

from transformer.server import main

main()
