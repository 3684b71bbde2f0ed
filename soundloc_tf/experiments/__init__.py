"""Floor 0: the experiments' settings, one small file each (big_vision's configs).

Every file says in its docstring the command that runs it and what it costs; it holds the
preset, the scales, the seeds and the runs (config fields over the preset). The machinery that
trains, evaluates and writes the tables is tools/experiment.py (and tools/real_photos.py).
"""
