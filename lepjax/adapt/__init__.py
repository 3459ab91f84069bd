"""`lepjax adapt`: the whole language adaptation, stage by stage, in one run directory.

    pipeline.py   the stages in order, adapt's composed config and its validation
    stages.py     the settings-hashed stage runner (a rerun skips completed stages)
    runs.py       the verbs a stage runs, configured from adapt's composed sections
    demo.py       the tiny demo model family (configs/demo.py)
    calibrate.py  self-calibration of the adapted instruct model
"""

from lepjax.adapt.pipeline import (STAGES, adapt, default_config, plan, trainings,
                                   validate_config)

__all__ = ["STAGES", "adapt", "default_config", "plan", "trainings", "validate_config"]
