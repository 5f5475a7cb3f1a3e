"""Fixtures shared by several test folders."""

from docker_support import docker_engine, docker_images  # noqa: F401  (session fixtures)
from htcondor_support import htcondor  # noqa: F401  (session fixture)
from process_support import processes  # noqa: F401  (function fixture)
from slurm_support import other_user, slurm  # noqa: F401  (session fixtures)
