"""The command line of every workflow stage, one module per family of stages.

Each module declares its stages' arguments next to their command functions and adds
them to the top parser with `register(stages)`; the commands parse, read, call the
domain modules and write. Only `ragtrain.__main__` imports this package: the layers
below never reach up into their command line.
"""
