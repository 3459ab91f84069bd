"""One forward pass of a model on fixed token ids (`lepjax forward`).

    lepjax forward --config=configs/forward.py --config.model.path=/path/to/model

Keys:
  model.*: which weights and how to compute (see lepjax.config.model_section). With an empty
    model.path, a randomly initialised model.preset is used.
  mesh.*: device mesh and sharding rules (see lepjax.config.mesh_section).
  tokens: explicit token ids (one row, repeated batch_size times); empty = random ids.
  batch_size, seq_len: shape of the random token ids.
  seed: seed of the random token ids.
  output_dir: where to write forward.json and resolved_config.json (empty: print only).
"""

from ml_collections import ConfigDict

from lepjax.config import mesh_section, model_section


def get_config() -> ConfigDict:
    cfg = ConfigDict()
    cfg.model = model_section()
    cfg.model.dtype = "float32"
    cfg.mesh = mesh_section()
    cfg.tokens = ()
    cfg.batch_size = 2
    cfg.seq_len = 16
    cfg.seed = 0
    cfg.output_dir = ""
    return cfg
