"""Report generators: one module per artefact."""
