"""Container entrypoint of a partialfc training job: ``python -m launcher [OPTIONS] [--] TRAIN_ARGS...``.

Works out where the node runs (Kubeflow PyTorchJob or Trainer v2, Indexed Job / JobSet, SLURM, or a
single machine) and execs torchrun with a c10d rendezvous; torchrun's elastic agent restarts the
worker group after a failure and every rank resumes from the newest complete checkpoint.
"""
