"""Weights shipped inside the repository (and the installed package), pinned by sha256 in
pipeline/presets/zoo.py (SHIPPED): the starter's 64 px StyleGAN2 (G_ema + D + w_avg, fp16) and its
card (architecture, data source, kimg, FD_face with its scale, training time and GPU, command).

A package only so the files ship inside an installed `hfld` (importlib.resources finds them).
"""
