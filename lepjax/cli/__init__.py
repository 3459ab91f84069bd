"""The command layer: `lepjax <verb>`.

`main.py` holds the explicit verb table; every other module here is one thin verb: it declares
its flags, names the library function that owns its config (`default_config`), checks the config
before anything is read (`validate`), calls one library function and returns `(summary,
output_dir)`. Only this package knows argparse, and nothing outside it imports it.
"""
