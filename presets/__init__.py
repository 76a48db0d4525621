"""Built-in presets (YAML), installed as the ``ngp_cli.presets`` package; see docs/presets.md."""
