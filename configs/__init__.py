"""Configs: YAML files, one per dataset, and the typed models that validate them (`configs.schema`).

Nothing is imported here: `configs.uri`, which every store path needs, stays light for the
command line's own process (`flows.cli`)."""
