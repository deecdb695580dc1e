"""The configs shipped with the package, one ml_collections ``get_config(arg)`` per file:
imagen_video.py (every cascade stage at every size), vdm.py (Video Diffusion Models), nuwa_xl.py
(NUWA-XL), bench_base_train.py (the training benchmark).

Load them as ``configs/<name>.py:key=value,...`` (see imagen_video_jax.config); that path means
the file here unless a file of that path exists in the current directory.
"""
