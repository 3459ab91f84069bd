"""The `lepjax augment` config: one layout serves every method; each method reads its section."""

from __future__ import annotations

from ml_collections import ConfigDict


def default_config() -> ConfigDict:
    """The `lepjax augment` config.

    Keys:
      mesh.*: the device mesh a local teacher / student is placed on (see lepjax.parallel).
      teacher.*: the teacher (FIAT's θ_β, the instruction synthesizer); see
        lepjax.augment.teacher.teacher_section.
      fiat.*: FIAT augmentation and inference; see lepjax.augment.fiat.fiat_section.
      instruct_pt.*: instruction synthesis; see lepjax.augment.instruct_pt.instruct_pt_section.
      progress: show progress bars.
    """
    from lepjax import config as config_lib
    from lepjax.augment.fiat import fiat_section
    from lepjax.augment.instruct_pt import instruct_pt_section
    from lepjax.augment.teacher import teacher_section

    return ConfigDict(dict(mesh=config_lib.mesh_section(), teacher=teacher_section(),
                           fiat=fiat_section(), instruct_pt=instruct_pt_section(), progress=True))
