"""Stages chained by `runner.run_pipeline`; they talk only through files under the run dir."""
