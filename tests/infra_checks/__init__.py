"""Checkers for the deployment configuration under infra/ (used by tests/test_infra.py).

Every checker returns a list of problems; the real files must give none.
"""
