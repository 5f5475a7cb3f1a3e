"""Fixtures shared by several test folders."""

from docker_support import docker_engine, docker_images  # noqa: F401  (session fixtures)
from process_support import processes  # noqa: F401  (function fixture)
from slurm_support import other_user, slurm  # noqa: F401  (session fixtures)
