"""Built-in feature presets (one YAML file each); see :func:`melgenre.features.get_preset`."""
