"""Model versions in MLflow: the registry, deriving a version from its parent (``lineage``), landing it
(``landing``: register, then move the alias compare-and-set), the publish step, calendar pushes."""
