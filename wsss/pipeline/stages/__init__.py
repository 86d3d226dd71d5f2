"""One module per stage, each exposing ``run(ctx: StageContext) -> dict[str, float]``."""
