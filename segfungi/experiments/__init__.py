"""Runs of many banks: one cell (a bank evaluated per feature kind), the bank-size sweep, the few-shot
trials, the field's benchmark tables and the comparison of several models' results."""
