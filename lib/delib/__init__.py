"""delib: deliberative alignment as a suite of research notebooks; this package does the work they show."""

__version__ = "0.1.0"
