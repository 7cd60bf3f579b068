"""workers: the data plane that runs on GPUs (data, model, training, eval). Imports only the
contracts of the control plane: pipeline.spec and pipeline.store."""
