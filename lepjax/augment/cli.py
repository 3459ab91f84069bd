"""`lepjax augment fiat|fiat-infer|instruct-pt`: offline augmentation with a teacher model.

    lepjax augment fiat --config=configs/fiat/augment.py --config.teacher.path=TEACHER \
        --config.fiat.inputs=train.jsonl --config.fiat.tokenizer=STUDENT \
        --config.fiat.output_dir=runs/fiat
    lepjax augment fiat-infer --config=configs/fiat/infer.py ...
    lepjax augment instruct-pt --config=configs/instruct_pt/domain.py ...

One config layout serves every method (see `default_config`); each method reads its section.
"""

from __future__ import annotations

import json
import os

from ml_collections import ConfigDict

from lepjax.cli import add_config_flag, verb

METHODS = ("fiat", "fiat-infer", "instruct-pt")


def default_config() -> ConfigDict:
    """The `lepjax augment` config.

    Keys:
      mesh.*: the device mesh a local teacher / student is placed on (see lepjax.config).
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


def _args(p):
    p.add_argument("method", choices=METHODS,
                   help="fiat: teacher rationales -> text + tokenised prompt/target shards; "
                        "fiat-infer: teacher rationale, then the tuned student's answer; "
                        "instruct-pt: instruction synthesis -> mixed pre-training shards")
    add_config_flag(p, "e.g. configs/fiat/augment.py, configs/fiat/infer.py, "
                       "configs/instruct_pt/domain.py")


@verb("augment", "FIAT rationales / inference and instruction synthesis with a teacher model",
      default_config=default_config)(_args)
def run_augment(args, cfg):
    from lepjax import config as config_lib

    if args.method == "fiat":
        from lepjax.augment.fiat import augment

        summary = augment(cfg, progress=cfg.progress)
    elif args.method == "fiat-infer":
        from lepjax.augment.fiat_infer import infer

        summary = infer(cfg, progress=cfg.progress)
    else:
        from lepjax.augment.instruct_pt import run

        summary = run(cfg, progress=cfg.progress)
    target = summary.get("output_dir") or os.path.dirname(summary.get("output", ""))
    if target:
        config_lib.write_resolved({"verb": "augment", "method": args.method,
                                   **config_lib.to_dict(cfg)}, target)
    print(json.dumps(summary, ensure_ascii=False))
