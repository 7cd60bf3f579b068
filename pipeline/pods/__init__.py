"""RunPod pods: the GraphQL client, SSH, bootstrap into Ray, health and idle stop, the Ray node
provider for `ray up cluster.yaml`, and the `pipeline pods` commands (docs/pods.md: Pods)."""
