"""The `lepjax augment` config: one layout serves every method (`fiat.augment`,
`fiat_infer.infer`, `instruct_pt.synthesize` all take it); each method reads its sections."""

from __future__ import annotations

from ml_collections import ConfigDict


def default_config() -> ConfigDict:
    """The `lepjax augment` config.

    Keys:
      mesh.*: the device mesh a local teacher / student is placed on (see lepjax.parallel).
      teacher.*: the teacher (FIAT's θ_β, the instruction synthesizer); see
        lepjax.augment.teacher.teacher_section.
      fiat.*: FIAT augmentation and inference; see lepjax.augment.fiat.fiat_section.
      synth.*: instruction synthesis; see lepjax.augment.instruct_pt.synth_section.
      progress: show progress bars.
    """
    from lepjax import parallel
    from lepjax.augment.fiat import fiat_section
    from lepjax.augment.instruct_pt import synth_section
    from lepjax.augment.teacher import teacher_section

    return ConfigDict(dict(mesh=parallel.mesh_section(), teacher=teacher_section(),
                           fiat=fiat_section(), synth=synth_section(), progress=True))
