"""gpuswarm-node: turn a GPU machine into a Docker Swarm worker for JupyterHub, and keep it healthy."""

__version__ = "0.1.0"
