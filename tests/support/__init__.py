"""Helpers that tests run or import; not tests themselves."""
