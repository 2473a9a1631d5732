"""Data: statistics on rows botserver sends (`schemas`, `front`, `routes`); no runner, no model:
pure numpy, answered in the worker's thread pool.
"""
