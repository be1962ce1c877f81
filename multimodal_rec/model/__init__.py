"""The combined model (three towers + losses) built by ``create_model``, its checkpoints, and the popularity prior."""
