"""Where the runs of a study go besides this machine's processes (``selfkd sweep`` runs locally by itself):
:mod:`selfkd.launchers.slurm` submits selfkd commands to a Slurm cluster through submitit, and
:mod:`selfkd.launchers.slurm_sweep` runs a sweep there. Nothing here is imported by ``selfkd --help``."""
