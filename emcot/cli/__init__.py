"""The ``emcot`` command line; argparse lives only in this package (one module per command)."""
