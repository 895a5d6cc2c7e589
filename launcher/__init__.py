"""Container entrypoint of a partialfc training job: ``python -m launcher [OPTIONS] [--] TRAIN_ARGS...``.

Works out where the node runs (Kubeflow PyTorchJob or Trainer v2, Indexed Job / JobSet, SLURM, or a
single machine) and runs torchrun's elastic agent with a c10d rendezvous, as its parent: the agent restarts
the worker group after a failure (every rank resumes from the newest complete checkpoint), the launcher
starts the agent again after a lost rendezvous store and returns the job's exit code.
"""
