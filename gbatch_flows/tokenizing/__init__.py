"""Building blocks of the token estimator; the public entry point is :mod:`gbatch_flows.tokens`."""
