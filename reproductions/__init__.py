"""Lightning modules that reproduce the papers that made RMSProp famous; each trains with
``optimizers.RMSprop``. Launch them with ``repro fit -c configs/<reproduction>/<name>.yaml``."""
