"""One forward pass of a model on fixed token ids (`lepjax forward`).

    lepjax forward --config=configs/forward.py --config.model.path=/path/to/model

Keys: see `lepjax.models.checksum.default_config` (model.*, mesh.*, tokens, batch_size, seq_len, seed,
output_dir, overwrite). With an empty model.path, a randomly initialised model.preset is used.
"""

from ml_collections import ConfigDict

from lepjax.models.checksum import default_config


def get_config() -> ConfigDict:
    return default_config()
