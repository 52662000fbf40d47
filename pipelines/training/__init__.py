"""Training: fit, evaluate and export every store, in local processes or on Ray; RayJobs for a cluster."""
