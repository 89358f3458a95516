"""What streamproc knows of the cluster, apart from any one stage.

Workload resolution, the cluster cache, the observations read back from the pods (status,
release), and the permissions each stage needs.
"""
