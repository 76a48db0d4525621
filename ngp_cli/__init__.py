"""ngp: instant neural graphics primitives as a command-line tool suite.

Importing this package is cheap: it imports neither torch nor CuPy (see docs/architecture.md).
"""

__version__ = "0.1.0"
