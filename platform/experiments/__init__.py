"""Runs composed from the stages: the README's demo (`demo/`), Table 1 (`table1`), the knobs both share on a
CPU (`cpu_run`), and the offline CLIP the demo trains when no pretrained weights are at hand (`offline_clip/`)."""
