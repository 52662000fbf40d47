"""Rollouts of a fleet version: the controller (challenger -> canary -> promote or roll back), its targets
(``canary``: the InferenceService) and ``reload`` (asking predictors to load a version)."""
