"""Drift of the served model: digit features, the reference profile, the tests and the
live monitor, in numpy only, so that the serving install runs them."""
