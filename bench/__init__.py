"""Measurements of letta-ops against baselines on real components (``python -m bench.run``).

Speed and memory are measured here, as ratios against a baseline taken in the same run, and
never in timed tests: the test suite only checks behaviour.
"""
