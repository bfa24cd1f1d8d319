"""The repository's scripts, importable by the tests as ``scripts.<name>`` (no ``sys.path`` edits).

A package rather than a tests/ helper: the netns runners are tools users run by hand
(``sudo .venv/bin/python scripts/compose_netns.py run``) as much as test fixtures, and
``tests`` importing ``scripts`` keeps the arrow pointing from the tests to the tools.
"""
