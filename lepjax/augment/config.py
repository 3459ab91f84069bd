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
      engine.*: where the shard tasks run (one task per missing output shard; see
        lepjax.data.engine): kind local (default; worker processes on this machine) |
        synchronous (in this process) | dask (scheduler / scheduler_file), num_workers, retries.
        With teacher.backend=local the tasks run in this process whatever the kind.
      progress: show progress bars.
    """
    from lepjax import parallel
    from lepjax.augment.fiat import fiat_section
    from lepjax.augment.instruct_pt import synth_section
    from lepjax.augment.teacher import teacher_section
    from lepjax.data.engine import engine_section

    return ConfigDict(dict(mesh=parallel.mesh_section(), teacher=teacher_section(),
                           fiat=fiat_section(), synth=synth_section(),
                           engine=engine_section(), progress=True))


def validate_config(cfg: ConfigDict) -> None:
    """Check the enumerated keys of an augment config (model-free, before any file is read):
    teacher.backend, teacher.api, fiat.on_error, fiat.on_long, synth.separator, synth.on_error;
    a ConfigError names the key and the closest valid values."""
    from lepjax.config import ConfigError, check_choice

    checks = [("teacher.backend", ("local", "openai")), ("teacher.api", ("completions", "chat")),
              ("fiat.on_error", ("fail", "skip")),
              ("fiat.on_long", ("truncate", "error")), ("synth.separator", ("eos_bos", "text")),
              ("synth.on_error", ("fail", "skip"))]
    for key, choices in checks:
        section, name = key.split(".")
        if section in cfg and name in cfg[section]:
            check_choice(key, cfg[section][name], choices)
    if "engine" in cfg:
        from lepjax.data.engine import validate

        validate(cfg.engine)
    if "synth" in cfg and not 0 < float(cfg.synth.augment_fraction) <= 1:
        raise ConfigError(f"config key 'synth.augment_fraction' = {cfg.synth.augment_fraction!r} "
                          "is not valid (expected 0 < fraction <= 1)")
